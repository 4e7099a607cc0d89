"""`nanochat eval --harness`: EleutherAI's lm-evaluation-harness (the `lm_eval` package) runs on a tiny
checkpoint through our in-process adapter, and the log-likelihoods (and greedy answers) it records equal
a direct computation with our model on the same contexts.

There is no internet here, and lm-eval's own tasks download their data from the Hugging Face Hub, so the
test writes three small tasks of its own (lm-eval task YAMLs over local jsonl files): multiple choice
(loglikelihood), perplexity (loglikelihood_rolling) and generation (generate_until)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from tests.conftest import run_cli  # noqa: E402

MC = [
    {"question": "The quick brown fox jumps over the lazy", "choices": ["dog", "cat", "fox"], "answer": 0},
    {"question": "Hello world! How are you", "choices": ["today?", "tomorrow?"], "answer": 0},
    {"question": "Numbers: 12 + 30 =", "choices": ["42", "41", "7"], "answer": 0},
    {"question": "I am fine, thank", "choices": ["you.", "me."], "answer": 0},
]
PPL = [{"text": "The quick brown fox jumps over the lazy dog."}, {"text": "Hello world! How are you today? I am fine, thank you."}]
GEN = [{"q": "Hello world! How", "a": " are you"}, {"q": "The quick brown", "a": " fox"}]


def write_tasks(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("mc", MC), ("ppl", PPL), ("gen", GEN)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def task(name: str, data: str, body: str) -> None:
        head = f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / data}\ntest_split: test\n"
        (folder / f"{name}.yaml").write_text(head + body)

    task("tiny_mc", "mc.jsonl", 'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n')
    task("tiny_ppl", "ppl.jsonl", 'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n  - metric: word_perplexity\n')
    task(
        "tiny_gen",
        "gen.jsonl",
        'output_type: generate_until\ndoc_to_text: "{{q}}"\ndoc_to_target: "{{a}}"\ngeneration_kwargs:\n  until: ["\\n", "."]\n  max_gen_toks: 8\nmetric_list:\n  - metric: exact_match\n',
    )
    return folder


def naive_loglikelihood(model, tok, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | <|bos|> context) by one plain forward, token by token; trailing spaces of the
    context belong to the continuation (the adapter's documented convention)."""
    import torch

    stripped = context.rstrip()
    continuation = context[len(stripped) :] + continuation
    ctx, cont = [tok.bos_id] + tok.encode(stripped), tok.encode(continuation)
    ids = ctx + cont
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0], dim=-1)
    total, greedy = 0.0, True
    for pos in range(len(ctx), len(ids)):
        total += float(logp[pos - 1, ids[pos]])
        greedy = greedy and int(logp[pos - 1].argmax()) == ids[pos]
    return total, greedy


def test_lm_eval_loglikelihoods_equal_ours(nanochat_home, tmp_path):
    from nanochat.engine.engine import Engine
    from tests.test_chat_cli import save_tiny_checkpoint

    model, tok = save_tiny_checkpoint(nanochat_home, source="base", tag="d1", step=4)
    tasks = write_tasks(tmp_path / "tasks")
    out = tmp_path / "harness.json"
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}
    r = run_cli(
        "eval", "--source", "base", "--harness", "tiny_mc,tiny_ppl,tiny_gen", "--harness-include", str(tasks), "--max-per-task", "3",
        "--offline", "--device", "cpu", "--batch-size", "2", "--json", str(out), env=env, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tiny_mc" in r.stdout and "acc" in r.stdout and "word_perplexity" in r.stdout
    res = json.loads(out.read_text())
    assert res["n-samples"]["tiny_mc"]["effective"] == 3  # --max-per-task is lm-eval's --limit

    mc = res["samples"]["tiny_mc"]
    assert len(mc) == 3
    for sample in mc:
        for (context, continuation), resp in zip(sample["arguments"], sample["resps"]):
            lp, greedy = resp[0]
            want_lp, want_greedy = naive_loglikelihood(model, tok, context, continuation)
            assert lp == pytest.approx(want_lp, abs=1e-4) and greedy == want_greedy
    acc = sum(float(s["acc"]) for s in mc) / 3
    assert res["results"]["tiny_mc"]["acc,none"] == pytest.approx(acc)

    for sample in res["samples"]["tiny_ppl"]:
        ((text,),) = sample["arguments"]  # one request per document
        assert sample["resps"][0][0] == pytest.approx(naive_loglikelihood(model, tok, "", text)[0], abs=1e-4)

    eng = Engine(model, tok, calculator=lambda e: None)
    for sample in res["samples"]["tiny_gen"]:
        ((context, kwargs),) = sample["arguments"]
        seq, _ = eng.generate_batch([tok.bos_id] + tok.encode(context), max_tokens=kwargs["max_gen_toks"], temperature=0.0)
        text = tok.decode(seq[0])
        cuts = [text.index(u) for u in kwargs["until"] if u in text]
        assert sample["resps"][0][0] == (text[: min(cuts)] if cuts else text)


def test_rolling_windows_predict_every_token_once_with_full_context():
    from nanochat.eval.harness import rolling_windows

    # lm-eval's own example: tokens 0..9, a 4-token context, BOS first
    bos = -1
    assert rolling_windows(list(range(10)), bos, 4) == [([bos, 0, 1, 2, 3], 4), ([3, 4, 5, 6, 7], 4), ([5, 6, 7, 8, 9], 2)]
    assert rolling_windows([7], bos, 4) == [([bos, 7], 1)]


def test_batched_scoring_equals_one_at_a_time_and_long_contexts_keep_their_end():
    """loglikelihood_ids pads batches on the right and cuts a too-long context from the left."""
    import torch

    from nanochat.eval.harness import loglikelihood_ids
    from tests.inference_helpers import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_model(tok, sequence_len=32)
    long_ctx = [tok.bos_id] + tok.encode("The quick brown fox jumps over the lazy dog. " * 6)
    pairs = [([tok.bos_id] + tok.encode("Hello"), tok.encode(" world!")), (long_ctx, tok.encode(" dog")), ([tok.bos_id], tok.encode("Numbers: 12"))]
    assert len(long_ctx) > 40
    got = loglikelihood_ids(model, tok, pairs, batch_size=2)
    for (ctx, cont), (lp, greedy) in zip(pairs, got):
        seq = (ctx + cont)[-33:]  # the model's 32 positions, plus the last target
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([seq[:-1]]))[0], dim=-1)
        positions = range(len(seq) - len(cont), len(seq))
        assert lp == pytest.approx(sum(float(logp[p - 1, seq[p]]) for p in positions), abs=1e-4)
        assert greedy == all(int(logp[p - 1].argmax()) == seq[p] for p in positions)


def test_harness_include_must_be_a_folder(tmp_path):
    from nanochat.common.errors import NanochatError
    from nanochat.eval.harness import run_harness

    with pytest.raises(NanochatError, match="--harness-include"):
        run_harness(None, ["tiny_mc"], include=str(tmp_path / "missing"))
