"""Your own data through real (tiny) runs: SFT on a file of 200 conversations lowers the loss on their
assistant turns and records ChatCORE at the steps asked for; a folder of text files imported and taken
through `speedrun --data NAME --sft-data FILE` from tokenizer to report."""

from __future__ import annotations

import json
import re
import time

from tests.conftest import run_cli
from tests.test_chat_jsonl import write_conversations
from tests.test_sft import _masked_loss, _tiny_base

# chance accuracy of each ChatCORE task, by hand: four letters for the multiple-choice sets, free answers otherwise
CHANCE = {"arc-easy": 0.25, "arc-challenge": 0.25, "mmlu": 0.25, "gsm8k": 0.0, "humaneval": 0.0, "spellingbee": 0.0}


def test_sft_on_your_conversations_lowers_their_loss_and_records_chatcore(tmp_path, nanochat_home, monkeypatch):
    from nanochat.common import checkpoint as ck
    from nanochat.engine.loading import load_model
    from nanochat.eval.report import load_sections
    from nanochat.tasks.customjson import CustomJSON
    from nanochat.train.loop import read_metrics
    from nanochat.train.sft import SFTConfig, run_sft

    monkeypatch.setenv("NANOCHAT_OFFLINE", "1")  # the chat evals from the packaged copies
    conv = write_conversations(tmp_path / "conv.jsonl", 200)
    _tiny_base(nanochat_home)
    base, tok, _ = load_model("base", "t", quiet=True)
    mine = CustomJSON(conv)
    fixed = [mine[i] for i in range(0, 200, 12)]  # 17 of them, their assistant turns only (the packer masks the rest)
    before = _masked_loss(base, tok, fixed)

    run_sft(SFTConfig(data=str(conv), num_iterations=8, init_lr_frac=4.0, eval_every=4, eval_tokens=256, device="cpu", model_tag="t",
                      out_tag="mine", chatcore_every=4, chatcore_max_cat=2, chatcore_max_sample=1))  # fmt: skip
    tuned, _, meta = load_model("sft", "mine", quiet=True)
    after = _masked_loss(tuned, tok, fixed)
    assert after < before - 0.5, (before, after)
    assert meta["sft_data"] == str(conv)

    recs = [r for r in read_metrics(ck.checkpoint_dir("sft", "mine") / "metrics.jsonl") if r["kind"] == "chatcore"]
    assert [r["step"] for r in recs] == [4, 8]  # every 4 steps, and the end (which is step 8): once each
    for r in recs:
        tasks = [t for t in CHANCE if t in r]
        assert {"arc-easy", "arc-challenge", "mmlu", "gsm8k", "spellingbee"} <= set(tasks)
        centered = [(r[t] - CHANCE[t]) / (1 - CHANCE[t]) for t in tasks]
        assert abs(r["chatcore"] - sum(centered) / len(centered)) < 1e-9
        assert r["partial"] == (len(tasks) < len(CHANCE))
    sft = load_sections()["sft"]
    assert re.search(r"step 4: -?\d\.\d{4}; step 8: -?\d\.\d{4}", sft["data"]["chatcore_during_sft"])
    assert [p[0] for p in sft["series"]["chatcore"]] == [4, 8]


def test_speedrun_on_a_folder_of_your_text_end_to_end(tmp_path):
    from nanochat.data.corpus import open_corpus

    home = tmp_path / "home"
    env = {"NANOCHAT_HOME": str(home), "NANOCHAT_OFFLINE": "1"}
    texts = tmp_path / "texts"
    (texts / "more").mkdir(parents=True)
    docs = list(open_corpus("demo", "train").iter_texts(max_chars=600_000))
    for i in range(30):  # 30 files of about 20K characters each, some in a subfolder
        (texts / ("more" if i % 3 else "") / f"chapter{i:02d}.txt").write_text("\n\n".join(docs[i::30]))
    r = run_cli("data", "import", str(texts), "--name", "mybooks", env=env)
    assert r.returncode == 0, r.stderr
    conv = write_conversations(tmp_path / "conv.jsonl", 200)
    t0 = time.perf_counter()
    r = run_cli("speedrun", "--tiny", "--data", "mybooks", "--sft-data", f"{conv}:2", "--skip", "rl", "--device", "cpu", env=env, timeout=600)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    print(f"tiny speedrun on your data: {wall:.0f} s")
    # every stage read what the plan said: the tokenizer and the base model your text, SFT the demo mixture plus your file
    assert json.loads((home / "tokenizer" / "tokenizer.json").read_text())["info"]["data"] == "mybooks"
    base_meta = sorted((home / "checkpoints" / "base" / "demo").glob("step_*/meta.json"))[-1]
    assert json.loads(base_meta.read_text())["data"] == "mybooks"
    sections = {p.stem: json.loads(p.read_text()) for p in (home / "report" / "sections").glob("*.json")}
    assert "| conv ×2 |" in sections["sft"]["data"]["mixture"] and "| chatterbot |" in sections["sft"]["data"]["mixture"]
    assert "corpus:mybooks" in (home / "report" / "report.md").read_text()
    assert "base model on 'mybooks', ≈" in r.stdout and "epochs of its" in r.stdout
