"""`nanochat export --format hf`: a checkpoint as a Hugging Face folder that transformers loads with
`trust_remote_code=True`, with no nanochat installed.

    config.json               model_type nanochat_gpt, the shape, every constant the forward uses, auto_map
    model.safetensors         the weights under transformers' names (model.*, lm_head.weight), float32,
                              embedding rows cut back from the padded vocabulary to the real one
    modeling_nanochat_gpt.py  the architecture (export/hf_modeling.py, copied verbatim)
    tokenizer.json, tokenizer_config.json, special_tokens_map.json   the tokenizer and chat template
    generation_config.json    stop tokens (<|assistant_end|> and <|bos|> for chat models) and our chat sampling defaults
    README.md                 a model card: what the model is, how to load it, and the training facts on record

The folder is written to a temporary name beside DIR and renamed when complete. DIR may be new, empty, or
an earlier export (replaced); anything else is refused rather than overwritten.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nanochat.common.errors import NanochatError

MODEL_TYPE = "nanochat_gpt"
MODELING_FILE = "modeling_nanochat_gpt.py"
CHAT_TEMPERATURE, CHAT_TOP_K = 0.6, 50  # `nanochat chat`'s defaults
CARD_SECTIONS = ("tokenizer", "pretrain", "eval-base", "sft", "eval-sft", "rl", "eval-rl")


def hf_config(config, tok, source: str, checkpoint: dict[str, Any]) -> dict[str, Any]:
    """config.json for a GPTConfig (see hf_modeling.NanochatGPTConfig for the meaning of each key)."""
    from nanochat.model import gpt

    eos = _eos_ids(tok, source)
    return {
        "architectures": ["NanochatGPTForCausalLM"],
        "model_type": MODEL_TYPE,
        "auto_map": {"AutoConfig": f"{MODELING_FILE[:-3]}.NanochatGPTConfig", "AutoModelForCausalLM": f"{MODELING_FILE[:-3]}.NanochatGPTForCausalLM"},
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "max_position_embeddings": config.sequence_len,
        "rotary_positions": gpt.ROTARY_POSITIONS_FACTOR * config.sequence_len,
        "attention_windows": config.window_sizes(),
        "value_embedding_layers": [i for i in range(config.n_layer) if config.has_value_embedding(i)],
        "smear": bool(getattr(config, "smear", False)),
        "backout": bool(getattr(config, "backout", False)),
        "attn_gate": bool(getattr(config, "attn_gate", False)),
        "backout_layer": config.n_layer // 2,
        "logit_softcap": gpt.SOFTCAP,
        "qk_scale": gpt.QK_SCALE,
        "rotary_base": _rope_base(),
        "ve_gate_channels": gpt.VE_GATE_CHANNELS,
        "ve_gate_range": gpt.VE_GATE_RANGE,
        "smear_gate_channels": getattr(gpt, "SMEAR_GATE_CHANNELS", 24),
        "attn_gate_channels": gpt.ATTN_GATE_CHANNELS,
        "attn_gate_range": gpt.ATTN_GATE_RANGE,
        "mlp_ratio": 4,
        "bos_token_id": tok.bos_id,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": tok.bos_id,
        "tie_word_embeddings": False,
        "use_cache": True,
        "dtype": "float32",
        "torch_dtype": "float32",
        "nanochat_checkpoint": checkpoint,
    }


def _rope_base() -> float:
    from nanochat.model.rotary import ROPE_BASE

    return float(ROPE_BASE)


def _eos_ids(tok, source: str) -> list[int]:
    """A chat model ends its answer with <|assistant_end|>; any model ends a document at the next <|bos|>."""
    if source == "base":
        return [tok.bos_id]
    return [tok.special_id("<|assistant_end|>"), tok.bos_id]


def hf_state_dict(state: dict, config) -> dict:
    """Our parameter names and padded embedding rows -> the exported model's names and real vocabulary."""
    V, padded = config.vocab_size, config.padded_vocab_size
    out = {}
    for name, t in state.items():
        t = t.detach().to("cpu").float()
        vocab_rows = name == "wte.weight" or name == "lm_head.weight" or name.startswith("value_embeds.")
        if vocab_rows:
            if t.shape[0] != padded:
                raise NanochatError(f"checkpoint tensor {name} has {t.shape[0]} rows, expected the padded vocabulary {padded}; the checkpoint does not match its config")
            t = t[:V]
        out[name if name == "lm_head.weight" else "model." + name] = t.contiguous()
    return out


def generation_config(tok, source: str) -> dict[str, Any]:
    eos = _eos_ids(tok, source)
    cfg: dict[str, Any] = {"bos_token_id": tok.bos_id, "eos_token_id": eos if len(eos) > 1 else eos[0], "pad_token_id": tok.bos_id}
    if source != "base":
        cfg.update(do_sample=True, temperature=CHAT_TEMPERATURE, top_k=CHAT_TOP_K)
    return cfg


def _check_target(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise NanochatError(f"--out {out} is a file; pass a folder path (new, empty, or an earlier export)")
    if not any(out.iterdir()):
        return
    try:
        model_type = json.loads((out / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type != MODEL_TYPE:
        raise NanochatError(f"--out {out} is a folder with other files in it; pass a new or empty folder (an earlier nanochat export there is replaced)")


def _scalar_facts(data: dict) -> list[tuple[str, str]]:
    rows = []
    for key, value in data.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float):
            rows.append((key, f"{value:.6g}"))
        elif isinstance(value, int) or (isinstance(value, str) and "\n" not in value and len(value) <= 200):
            rows.append((key, str(value)))
    return rows


def model_card(config, params: int, source: str, info, meta: dict, sections: dict[str, dict]) -> str:
    """README.md: YAML front matter, how to load the model, its shape, and the facts the run recorded."""
    from nanochat import __version__

    name = f"nanochat-{source}-{info.tag}-step{info.step}"
    kind = "chat model" if source != "base" else "base (pretrained) model"
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [nanochat, custom_code]",
        "---",
        "",
        f"# {name}",
        "",
        f"A {kind} trained with `nanochat` {__version__}: the {source} checkpoint `{info.tag}` step {info.step}, {params:,} parameters.",
        "",
        "## Use it",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        'tok = AutoTokenizer.from_pretrained("PATH", trust_remote_code=True)',
        'model = AutoModelForCausalLM.from_pretrained("PATH", trust_remote_code=True)',
    ]
    if source != "base":
        lines += [
            'ids = tok.apply_chat_template([{"role": "user", "content": "Why is the sky blue?"}], add_generation_prompt=True, return_tensors="pt")["input_ids"]',
            "out = model.generate(ids, max_new_tokens=128)",
            "print(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))",
        ]
    else:
        lines += [
            'ids = tok("The capital of France is", return_tensors="pt")["input_ids"]  # starts with <|bos|>',
            "out = model.generate(ids, max_new_tokens=32, do_sample=False)",
            "print(tok.decode(out[0], skip_special_tokens=True))",
        ]
    lines += [
        "```",
        "",
        "`trust_remote_code=True` runs `modeling_nanochat_gpt.py` from this folder: a self-contained definition of the",
        "architecture (it imports only torch and transformers). `tokenizer(text)` puts `<|bos|>` first, as in training;",
        "the chat template renders nanochat's conversation format exactly (`<|user_start|>`...`<|user_end|>`,",
        "`<|assistant_start|>`...`<|assistant_end|>`, a system message merged into the first user message).",
        "nanochat's calculator tool is not run by `generate`: text after `<|python_start|>` is not evaluated.",
        "",
        "## Architecture",
        "",
        "| | |",
        "|---|---|",
        f"| layers | {config.n_layer} |",
        f"| width | {config.n_embd} |",
        f"| heads (kv heads) | {config.n_head} ({config.n_kv_head}) |",
        f"| context | {config.sequence_len} tokens |",
        f"| vocabulary | {config.vocab_size} |",
        f"| attention windows | {', '.join(str(w) for w in config.window_sizes())} |",
        f"| value embeddings on layers | {', '.join(str(i) for i in range(config.n_layer) if config.has_value_embedding(i))} |",
        f"| smear gate, backout | {'on' if getattr(config, 'smear', False) else 'off'}, {'on' if getattr(config, 'backout', False) else 'off'} |",
        f"| attention output gate | {'on' if getattr(config, 'attn_gate', False) else 'off'} |",
        "",
        "Pre-norm transformer with parameter-free RMS norms, rotary embeddings (base 100,000), QK norm, relu² MLPs,",
        "per-layer residual and x0 scalars, untied embeddings and a 15·tanh(x/15) logit softcap.",
        "",
        "## Training",
        "",
    ]
    facts = _scalar_facts({k: v for k, v in meta.items() if k not in ("model_config", "format")})
    facts += _scalar_facts({f"plan.{k}": v for k, v in (meta.get("plan") or {}).items()})
    if facts:
        lines += ["From the checkpoint:", "", "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in facts], ""]
    for section in CARD_SECTIONS:
        s = sections.get(section)
        if not s:
            continue
        rows = _scalar_facts(s.get("data", {}))
        if rows:
            lines += [f"### {s.get('title', section)}", "", *[f"- {k}: {v}" for k, v in rows], ""]
    if not facts and not any(sections.get(s) for s in CARD_SECTIONS):
        lines += ["No training records were found beside this checkpoint.", ""]
    return "\n".join(lines) + "\n"


def export_hf(source: str, model_tag: str | None, step: int | None, out: str | Path) -> Path:
    """Write the export folder for a checkpoint; returns its path."""
    import shutil

    from safetensors.torch import save_file

    from nanochat.common.atomic import fresh_temp_dir, publish_dir
    from nanochat.common.checkpoint import load_meta, load_weights, resolve_checkpoint
    from nanochat.data.tokenizer import get_tokenizer
    from nanochat.eval.report import load_sections
    from nanochat.export import hf_tokenizer
    from nanochat.model.config import GPTConfig

    out = Path(out).expanduser()
    _check_target(out)
    info = resolve_checkpoint(source, model_tag, step)
    meta = load_meta(info.path)
    config = GPTConfig.from_dict(meta["model_config"])
    tok = get_tokenizer()
    if tok.vocab_size != config.vocab_size:
        raise NanochatError(
            f"the tokenizer has {tok.vocab_size} tokens but {info.path} was trained with {config.vocab_size}; "
            "point NANOCHAT_HOME at the home the model was trained in"
        )
    state = hf_state_dict(load_weights(info.path, "cpu"), config)
    params = sum(t.numel() for t in state.values())
    checkpoint = {"source": source, "tag": info.tag, "step": info.step}
    eos_name = "<|bos|>" if source == "base" else "<|assistant_end|>"
    try:
        sections = load_sections()
    except NanochatError:
        sections = {}  # a damaged report section must not block an export; the card just has less in it

    tmp = fresh_temp_dir(out)
    try:

        def write_json(name: str, obj: Any) -> None:
            (tmp / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        write_json("config.json", hf_config(config, tok, source, checkpoint))
        write_json("generation_config.json", generation_config(tok, source))
        write_json("tokenizer.json", hf_tokenizer.tokenizer_json(tok))
        write_json("tokenizer_config.json", hf_tokenizer.tokenizer_config(tok, config.sequence_len, eos_name))
        write_json("special_tokens_map.json", hf_tokenizer.special_tokens_map(tok, eos_name))
        shutil.copyfile(Path(__file__).with_name("hf_modeling.py"), tmp / MODELING_FILE)
        (tmp / "README.md").write_text(model_card(config, params, source, info, meta, sections), encoding="utf-8")
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
