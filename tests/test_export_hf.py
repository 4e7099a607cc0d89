"""`nanochat export --format hf`: the folder loads in Hugging Face transformers in a fresh process that cannot
import nanochat, and the loaded model and tokenizer behave exactly like ours: logits (1e-4), chat template
ids, greedy generation token for token; plus the tokenizer on real text and the folder's safety rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from tests.conftest import run_cli  # noqa: E402
from tests.inference_helpers import tiny_tokenizer  # noqa: E402

PROMPTS = ["Hello world! How are you today?", "Numbers: 12 + 30 = 42", "Héllo wörld, naïve café — 你好 😀"]
CONVERSATIONS = [
    [{"role": "user", "content": "Hello world!"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "How are you today?"},
        {"role": "assistant", "content": "I am fine, thank you."},
        {"role": "user", "content": "The quick brown fox?"},
    ],
]

# Runs in a fresh interpreter whose import system refuses nanochat: what the exported folder needs is
# transformers and torch only.
CHILD = r"""
import importlib.abc, json, sys
class NoNanochat(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "nanochat" or name.startswith("nanochat."):
            raise ImportError("nanochat must not be imported by an exported model")
        return None
sys.meta_path.insert(0, NoNanochat())
import torch
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer
out, job = sys.argv[1], json.loads(sys.argv[2])
model, info = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, output_loading_info=True)
model.eval()
tok = AutoTokenizer.from_pretrained(out, trust_remote_code=True)
res = {"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"])}
res["encoded"] = [tok(p)["input_ids"] for p in job["prompts"]]
with torch.no_grad():
    res["logits"] = [model(torch.tensor([ids])).logits[0].tolist() for ids in res["encoded"]]
res["chat_ids"] = [tok.apply_chat_template(c, add_generation_prompt=True)["input_ids"] for c in job["conversations"]]
res["chat_text"] = tok.apply_chat_template(job["conversations"][1], add_generation_prompt=True, tokenize=False)
prompt = torch.tensor([res["chat_ids"][0]])
with torch.no_grad():
    res["generated"] = model.generate(prompt, max_new_tokens=job["max_new"], do_sample=False)[0, prompt.shape[1]:].tolist()
    res["generated_no_cache"] = model.generate(prompt, max_new_tokens=job["max_new"], do_sample=False, use_cache=False)[0, prompt.shape[1]:].tolist()
res["decoded"] = tok.decode(res["encoded"][2], skip_special_tokens=True)
res["modules"] = sorted(m for m in sys.modules if m.split(".")[0] == "nanochat")
print(json.dumps(res))
"""


def _has_field(name: str) -> bool:
    from nanochat.model.config import GPTConfig

    return name in {f.name for f in fields(GPTConfig)}


def _tiny_checkpoint(home: Path, source: str = "sft", step: int = 7):
    """A 3-layer GQA model with a real sliding window (and the smear gate and backout where the model has them),
    its weights scaled so that the logits are far from uniform and greedy decoding is well defined."""
    import torch

    from nanochat.common import checkpoint as ckpt
    from nanochat.model import GPTConfig, build_model

    tok = tiny_tokenizer()
    tok.save(home / "tokenizer")
    extra = {k: True for k in ("smear", "backout", "attn_gate") if _has_field(k)}
    cfg = GPTConfig(sequence_len=64, vocab_size=tok.vocab_size, n_layer=3, n_head=4, n_kv_head=2, n_embd=32, window_pattern="SL", **extra)
    model = build_model(cfg, "cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else 1
            p.copy_(torch.randn(p.shape, generator=g) * (0.4 if p.dim() < 2 else 1.6 / fan_in**0.5))
    model.eval()
    meta = {"model_config": cfg.to_dict(), "step": step, "data": "demo", "val_bpb": 1.234}
    ckpt.save_checkpoint(ckpt.checkpoint_dir(source, "d3"), step, model_state=model.state_dict(), meta=meta, optimizer_state={}, rank_state={})
    return model, tok


def _child_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing points at our source tree
    env.update(HF_HOME=str(tmp / "hf-home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def test_export_loads_in_transformers_without_nanochat(nanochat_home, tmp_path):
    import torch

    from nanochat.engine.engine import Engine
    from nanochat.engine.prompt import render_chat_prompt

    model, tok = _tiny_checkpoint(nanochat_home)
    out = tmp_path / "export"
    r = run_cli("export", "--format", "hf", "--source", "sft", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert {"config.json", "model.safetensors", "modeling_nanochat_gpt.py", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "README.md"} <= {
        p.name for p in out.iterdir()
    }
    max_new = 24
    job = {"prompts": PROMPTS, "conversations": CONVERSATIONS, "max_new": max_new}
    child = subprocess.run([sys.executable, "-c", CHILD, str(out), json.dumps(job)], capture_output=True, text=True, env=_child_env(tmp_path), timeout=300, cwd=tmp_path)
    assert child.returncode == 0, child.stderr[-3000:]
    res = json.loads(child.stdout.strip().splitlines()[-1])
    assert res["modules"] == [] and res["missing"] == [] and res["unexpected"] == []

    # tokenizer(text) is our encoding with <|bos|> in front, and decodes back to the text
    assert res["encoded"] == [tok.encode(p, prepend="<|bos|>") for p in PROMPTS]
    assert res["decoded"] == PROMPTS[2]
    # logits equal ours on the three prompts
    for ids, theirs in zip(res["encoded"], res["logits"]):
        with torch.no_grad():
            ours = model(torch.tensor([ids]))[0]
        assert len(ids) > 8
        torch.testing.assert_close(torch.tensor(theirs), ours, atol=1e-4, rtol=0)
    # the chat template renders exactly our prompt ids (server and training renderers alike)
    for convo, ids in zip(CONVERSATIONS, res["chat_ids"]):
        assert ids == render_chat_prompt(tok, convo, 10_000) == tok.render_for_completion(convo)
    assert res["chat_text"] == (
        "<|bos|><|user_start|>Be brief.\n\nHow are you today?<|user_end|><|assistant_start|>I am fine, thank you.<|assistant_end|>"
        "<|user_start|>The quick brown fox?<|user_end|><|assistant_start|>"
    )
    # greedy generation matches our engine token for token (and transformers' cached and uncached paths agree)
    seqs, _ = Engine(model, tok, calculator=lambda e: None).generate_batch(res["chat_ids"][0], max_tokens=max_new, temperature=0.0)
    ours = seqs[0]
    theirs = res["generated"]
    stops = {tok.special_id("<|assistant_end|>"), tok.bos_id}
    if theirs and theirs[-1] in stops:  # transformers keeps the stop token; our engine drops it
        theirs = theirs[:-1]
    assert len(ours) >= 5 and theirs == ours
    assert res["generated_no_cache"] == res["generated"]


def test_exported_files_describe_the_model(nanochat_home, tmp_path):
    _, tok = _tiny_checkpoint(nanochat_home, source="base", step=3)
    out = tmp_path / "base-hf"
    from nanochat.eval.report import record_section
    from nanochat.export.hf import export_hf

    record_section("pretrain", {"depth": 3, "total_time_s": 12.5, "notes": "a\nmarkdown block"})

    export_hf("base", None, None, out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "nanochat_gpt" and cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_nanochat_gpt.NanochatGPTForCausalLM"
    assert cfg["num_hidden_layers"] == 3 and cfg["num_key_value_heads"] == 2 and cfg["vocab_size"] == tok.vocab_size
    assert cfg["attention_windows"] == [16, 64, 64]  # S = ceil(64 / 4), the last layer always full
    assert cfg["value_embedding_layers"] == [0, 2]
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.bos_id  # a base model ends a document at the next <|bos|>
    card = (out / "README.md").read_text()
    assert "base checkpoint `d3` step 3" in card and "| val_bpb | 1.234 |" in card and "trust_remote_code=True" in card
    assert "- total_time_s: 12.5" in card and "markdown block" not in card  # the report's scalar facts
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("model.wte.weight").shape[0] == tok.vocab_size  # padded rows cut back to the vocabulary


def test_export_refuses_a_folder_with_other_files(nanochat_home, tmp_path):
    _tiny_checkpoint(nanochat_home)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    r = run_cli("export", "--out", str(busy))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "new or empty folder" in r.stderr
    assert (busy / "notes.txt").read_text() == "mine" and len(list(busy.iterdir())) == 1
    assert run_cli("export", "--format", "gguf", "--out", str(tmp_path / "x")).returncode == 2
    # an earlier export is replaced, not refused
    from nanochat.export.hf import export_hf

    again = tmp_path / "again"
    export_hf("sft", None, None, again)
    (again / "stale.txt").write_text("from before")
    export_hf("sft", None, None, again)
    assert (again / "config.json").is_file() and not (again / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".tmp-", ".old-"))]


def test_tokenizer_json_matches_ours_on_real_text(tmp_path):
    """A 2,048-token tokenizer trained on one novel, compared on another: every id equal."""
    from transformers import PreTrainedTokenizerFast

    from nanochat.data.resources import read_text
    from nanochat.data.tokenizer import Tokenizer
    from nanochat.export.hf_tokenizer import tokenizer_json

    tok = Tokenizer.train([read_text("corpus/austen/emma.txt")[:400_000]], vocab_size=2048)
    (tmp_path / "tokenizer.json").write_text(json.dumps(tokenizer_json(tok)))
    hf = PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    held_out = read_text("corpus/austen/persuasion.txt")[:60_000]
    texts = [held_out, "  two  spaces,\ttabs\r\nand\n\n\nnewlines   ", "1234567 + 89 = 1234656; x=3.14159", "don't WE'LL they've", "naïve 😀 你好，世界 ÿ\x00\x7f"]
    for text in texts:
        ids = hf(text, add_special_tokens=False)["input_ids"]
        assert ids == tok.encode(text)
        assert hf.decode(ids) == text
