"""Your own conversations: line-by-line checking (`FILE:LINE: reason` before any model loads, or skipped
with --skip-bad), epochs in the SFT mixture, `data import --kind chat` from jsonl and parquet, and the
speedrun's plan with your own text and conversations (dry runs; the real runs are in test_userdata_runs)."""

from __future__ import annotations

import json
import re

import pytest

from nanochat.common.errors import NanochatError
from tests.conftest import run_cli

GOOD = {"messages": [{"role": "user", "content": "What colour is the sky?"}, {"role": "assistant", "content": "Blue."}]}
USER_TWICE = {"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]}


def write_conversations(path, n: int = 200, bad: dict[int, str] | None = None):
    """n conversations, one per line (line k is conversation k); `bad` replaces given line numbers (from 1)."""
    colours = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]
    things = ["apple", "sky", "grass", "sun", "plum", "carrot", "coal", "snow", "lemon", "sea"]
    lines = []
    for i in range(n):
        t, c = things[i % len(things)], colours[(i * 7 + i // 10) % len(colours)]
        msgs = [{"role": "user", "content": f"What colour is my {t}?"}, {"role": "assistant", "content": f"Your {t} is {c}."}]
        if i % 5 == 0:
            msgs.insert(0, {"role": "system", "content": "Answer briefly."})
        lines.append(json.dumps({"messages": msgs}))
    for lineno, text in (bad or {}).items():
        lines[lineno - 1] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_line_17_stops_sft_before_any_model_loads(tmp_path):
    conv = write_conversations(tmp_path / "conv.jsonl", 20, {17: json.dumps(USER_TWICE)})
    # no base checkpoint exists: reaching the model would fail with "no valid base checkpoint" instead
    r = run_cli("sft", "--data", str(conv), "--device", "cpu", "--nproc", "1")
    assert r.returncode == 1, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(r"conv\.jsonl:17: message 2 is 'user' but 'assistant' was expected", err), err
    assert "conv.jsonl:16" not in err and "no valid base checkpoint" not in err and "--skip-bad" in err
    # on top of a mixture, and broken JSON: the same
    conv.write_text(conv.read_text().replace(json.dumps(USER_TWICE), '{"messages": [oops'))
    r = run_cli("sft", "--data", "demo", "--add", f"{conv}:2", "--device", "cpu", "--nproc", "1")
    assert r.returncode == 1 and re.search(r"conv\.jsonl:17: not valid JSON", r.stderr), r.stderr
    # --skip-bad: the line is counted and left out, and sft goes on (to the missing checkpoint)
    r = run_cli("sft", "--data", str(conv), "--skip-bad", "--device", "cpu", "--nproc", "1")
    assert r.returncode == 1 and "1 bad line(s) skipped" in r.stderr and "19 conversations kept" in r.stderr
    assert "no valid base checkpoint" in r.stderr


@pytest.mark.parametrize(
    "obj, reason",
    [
        (USER_TWICE, "message 2 is 'user' but 'assistant' was expected"),
        ({"messages": [{"role": "user", "content": "2+2?"}]}, "the last message must be the assistant's"),
        ({"messages": [GOOD["messages"][0], {"role": "assistant", "content": "", "tool_calls": []}]}, "message 2 has 'tool_calls': write calculator calls as content parts"),
        ({"messages": [GOOD["messages"][0], {"role": "assistant", "content": "4", "weight": 1}]}, "message 2 has key(s) 'weight'"),
        ({"conversation": GOOD["messages"]}, "expected an object with a 'messages' array (keys here: conversation)"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}]}, "message 2: a system message may only come first"),
        ({"messages": [GOOD["messages"][0], {"role": "assistant", "content": [{"type": "image", "text": "x"}]}]}, "message 2 part 1 has unknown type 'image'"),
        ("hello", "expected an object with a 'messages' array"),
    ],
)
def test_each_bad_conversation_says_why(tmp_path, obj, reason):
    from nanochat.data.chat_jsonl import read_chat_file

    f = tmp_path / "c.jsonl"
    f.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(GOOD) + "\n" + json.dumps(obj) + "\n")
    with pytest.raises(NanochatError) as e:
        read_chat_file(f)
    assert f"c.jsonl:4: {reason}" in str(e.value)  # line 2 is blank: line numbers are the file's


def test_accepted_forms_system_message_and_calculator_parts(tmp_path):
    from nanochat.data.chat_jsonl import read_chat_file

    tool = {"messages": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "What is 12*3?"},
                         {"role": "assistant", "content": [{"type": "python", "text": "12*3"}, {"type": "python_output", "text": "36"},
                                                           {"type": "text", "text": "It is 36."}]}]}  # fmt: skip
    f = tmp_path / "ok.jsonl"
    f.write_text(json.dumps(tool) + "\n" + json.dumps(GOOD["messages"]) + "\n")  # the bare-array form too
    got = read_chat_file(f)
    assert got.conversations == [tool["messages"], GOOD["messages"]] and got.skipped == []
    # and what is read renders: the tool call is trained on, its output is not
    from nanochat.data.chat_format import normalize

    assert [role for role, _ in normalize(got.conversations[0])] == ["user", "assistant"]


def test_skip_bad_lists_every_bad_line_and_five_are_named_at_most(tmp_path):
    from nanochat.data.chat_jsonl import read_chat_file

    bad = {n: "[]" for n in (3, 5, 7, 9, 11, 13, 15)}
    f = write_conversations(tmp_path / "many.jsonl", 20, bad)
    with pytest.raises(NanochatError) as e:
        read_chat_file(f)
    msg = str(e.value)
    assert [int(n) for n in re.findall(r"many\.jsonl:(\d+):", msg)] == [3, 5, 7, 9, 11] and "(and 2 more bad lines)" in msg
    got = read_chat_file(f, skip_bad=True)
    assert len(got.conversations) == 13 and [int(s.split(":")[1]) for s in got.skipped] == sorted(bad)


def test_epochs_and_files_alone_in_the_sft_mixture(tmp_path):
    from nanochat.train.sft_data import sft_mixture

    conv = write_conversations(tmp_path / "conv.jsonl", 200)
    alone_train, alone_val, parts = sft_mixture(str(conv))
    assert len(alone_train) + len(alone_val) == 200 and 0 < len(alone_val) < 40
    train_texts = {json.dumps(alone_train[i]["messages"]) for i in range(len(alone_train))}
    assert not any(json.dumps(alone_val[i]["messages"]) in train_texts for i in range(len(alone_val)))
    demo_train, demo_val, _ = sft_mixture("demo")
    mixed_train, mixed_val, parts = sft_mixture("demo", add=(f"{conv}:3",))
    # three epochs of the file's train side on top of the demo mixture; its val side once
    assert len(mixed_train) == len(demo_train) + 3 * len(alone_train) and len(mixed_val) == len(demo_val) + len(alone_val)
    assert parts[-1].name == "conv ×3" and parts[-1].train == 3 * len(alone_train)
    for spec, match in ((f"{conv}:0", "at least 1"), (str(tmp_path / "nope.jsonl"), "does not exist"), ("nosuchset", "'nosuchset' is not a conversation set")):
        with pytest.raises(NanochatError, match=match):
            sft_mixture("demo", add=(spec,))


def _parquet(path, rows, as_json: bool):
    import pyarrow as pa
    import pyarrow.parquet as pq

    col = [json.dumps(m) for m in rows] if as_json else rows
    pq.write_table(pa.table({"messages": col, "id": list(range(len(rows)))}), path)
    return path


def test_import_chat_from_jsonl_and_parquet(tmp_path, nanochat_home):
    from nanochat.train.sft_data import sft_mixture

    src = tmp_path / "src"
    src.mkdir()
    write_conversations(src / "a.jsonl", 30)
    rows = [GOOD["messages"]] * 10
    _parquet(src / "b.parquet", rows, as_json=False)
    _parquet(src / "c.parquet", rows, as_json=True)  # a column of JSON strings works too
    r = run_cli("data", "import", str(src), "--kind", "chat", "--name", "mine")
    assert r.returncode == 0, r.stderr
    assert "50 (each checked)" in r.stdout and "sft --data mine" in r.stdout
    lines = (nanochat_home / "data" / "mine" / "conversations.jsonl").read_text().splitlines()
    assert len(lines) == 50 and json.loads(lines[-1]) == GOOD
    listed = run_cli("data", "list").stdout
    assert re.search(r"mine\s+│\s+chat\s+│.*│\s+50\s+│", listed), listed
    train, val, _ = sft_mixture("mine")
    assert len(train) + len(val) == 50
    # the set can be added by name with epochs; a parquet file's bad row is named by its row number
    train2, _, parts = sft_mixture("demo", add=("mine:2",))
    assert parts[-1].name == "mine ×2"
    _parquet(tmp_path / "bad.parquet", [GOOD["messages"], GOOD["messages"], USER_TWICE["messages"]], as_json=False)
    r = run_cli("data", "import", str(tmp_path / "bad.parquet"), "--kind", "chat", "--name", "bad")
    assert r.returncode == 1 and "bad.parquet:3: message 2 is 'user'" in r.stderr
    assert not (nanochat_home / "data" / "bad").exists()
    # pretraining on a conversation set says what it is
    r = run_cli("tokenize-train", "--data", "mine", "--vocab-size", "300")
    assert r.returncode == 1 and "holds conversations" in r.stderr and "sft --data mine" in r.stderr


def test_speedrun_plan_names_your_data_and_epochs(tmp_path, nanochat_home):
    texts = tmp_path / "texts"
    texts.mkdir()
    para = "It was a bright cold day in April, and the clocks were striking thirteen. " * 14  # ~1,000 characters
    for i in range(100):
        (texts / f"doc{i:03d}.txt").write_text(f"Document {i}.\n\n" + para)
    assert run_cli("data", "import", str(texts), "--name", "mytext").returncode == 0
    conv = write_conversations(tmp_path / "conv.jsonl", 50)
    r = run_cli("speedrun", "--tiny", "--data", "mytext", "--sft-data", "conv.jsonl:2", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cmds = {line.split()[2]: line.strip() for line in r.stdout.splitlines() if line.strip().startswith("$ nanochat ")}
    assert "download" not in cmds and "--data mytext" in cmds["tokenize-train"] and "--data mytext" in cmds["pretrain"]
    sft = next(line for line in r.stdout.splitlines() if "$ nanochat sft" in line)
    assert f"--data demo --add {conv}:2" in sft  # the relative path made absolute: a rerun from elsewhere finds it
    assert "--data mytext" in next(line for line in r.stdout.splitlines() if "--tasks core,bpb" in line)
    # tiny pretraining reads 40 steps x 256 tokens: at 2 to 5 characters a token, and up to a third more cropped
    # by packing, 20K-80K characters of the ~106K imported for training
    m = re.search(r"base model on 'mytext', ≈([\d.]+) epochs", r.stdout)
    assert m and 0.2 <= float(m.group(1)) <= 0.8, r.stdout
    assert "chat fine-tuning on the demo mixture +" in r.stdout
    # a conversation set is not pretraining text; a bad conversation line stops the run before any stage
    assert run_cli("data", "import", str(conv), "--kind", "chat", "--name", "chats").returncode == 0
    r = run_cli("speedrun", "--tiny", "--data", "chats", "--dry-run")
    assert r.returncode == 2 and "--sft-data chats" in r.stderr
    write_conversations(conv, 50, {17: "{}"})
    r = run_cli("speedrun", "--tiny", "--data", "mytext", "--sft-data", str(conv))
    assert r.returncode == 1 and "conv.jsonl:17: expected an object with a 'messages' array" in r.stderr
    assert not (nanochat_home / "speedrun" / "state.json").exists() and not (nanochat_home / "tokenizer").exists()


def test_tokenize_eval_measures_your_imported_text(tmp_path, nanochat_home):
    from tests.train_helpers import install_tokenizer

    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(4):
        (texts / f"n{i}.txt").write_text(f"Note {i}: the quick brown fox jumps over the lazy dog.\n")
    assert run_cli("data", "import", str(texts), "--name", "notes", "--val-fraction", "0.5").returncode == 0
    install_tokenizer(nanochat_home)
    r = run_cli("tokenize-eval", "--data", "notes")
    assert r.returncode == 0, r.stderr
    # two of the four notes are the validation split: 52 bytes each once the final newline is stripped, joined by "\n\n"
    row = next(line for line in r.stdout.splitlines() if "notes val" in line)
    assert re.search(r"notes val\s+│\s+106\s+│", row), row
