"""EleutherAI's lm-evaluation-harness on our checkpoints, in process: `nanochat eval --harness TASKS`.

`nanochat_lm(model, tokenizer)` is an lm-eval model (an `lm_eval.api.model.LM`) over a loaded GPT and our tokenizer:

- loglikelihood(context, continuation): trailing whitespace of the context moves to the continuation (so
  " Paris" is scored as the token the model learned), then ids = [<|bos|>] + encode(context) +
  encode(continuation), cut from the left to the model's context; the answer is the sum of the
  continuation tokens' log-softmax and whether each is the argmax. Requests run in batches, longest first.
- loglikelihood_rolling(text): every token of [<|bos|>] + encode(text) predicted once, in windows of the
  model's context; the last window keeps a full context and scores only its new tokens.
- generate_until(context, gen_kwargs): greedy (or sampled, with do_sample/temperature) decoding with our
  engine after [<|bos|>] + encode(context), without the calculator tool, up to max_gen_toks, cut at the
  first `until` string.

lm-eval tasks normally download their data from the Hugging Face Hub; `include` points lm-eval at a folder of
your own task YAMLs (local json/csv data files work offline). `run_harness` returns lm-eval's results
(and, with `log_samples`, every request with its answer).
"""

from __future__ import annotations

import os
from typing import Any

from nanochat.common.errors import NanochatError

MISSING = "lm-evaluation-harness is not installed; pip install 'nanochat[interop]' (or pip install lm_eval)"


def require_lm_eval() -> None:
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise NanochatError(MISSING)


def _split_space(context: str, continuation: str) -> tuple[str, str]:
    n = len(context) - len(context.rstrip())
    if n:
        return context[:-n], context[-n:] + continuation
    return context, continuation


def loglikelihood_ids(model, tokenizer, pairs: list[tuple[list[int], list[int]]], batch_size: int = 8) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), greedy?) per (context ids, continuation ids) pair, batched."""
    import torch
    import torch.nn.functional as F

    L = int(model.config.sequence_len)
    device = next(model.parameters()).device
    results: list[tuple[float, bool] | None] = [None] * len(pairs)
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows = []
        for i in chunk:
            ctx, cont = pairs[i]
            if not cont:
                results[i] = (0.0, True)
                continue
            seq = (ctx + cont)[-(L + 1) :]
            n_cont = min(len(cont), len(seq) - 1)
            rows.append((i, seq[:-1], seq[-n_cont:]))
        if not rows:
            continue
        width = max(len(r[1]) for r in rows)
        batch = torch.full((len(rows), width), tokenizer.bos_id, dtype=torch.long)
        for b, (_, inp, _) in enumerate(rows):
            batch[b, : len(inp)] = torch.tensor(inp)
        with torch.inference_mode():
            logits = model(batch.to(device))  # right padding: causal attention leaves the real positions alone
        for b, (i, inp, target) in enumerate(rows):
            n = len(target)
            lp = F.log_softmax(logits[b, len(inp) - n : len(inp)].float(), dim=-1)
            tgt = torch.tensor(target, device=lp.device)
            total = float(lp.gather(1, tgt.unsqueeze(1)).sum())
            greedy = bool((lp.argmax(dim=-1) == tgt).all())
            results[i] = (total, greedy)
    return results  # type: ignore[return-value]


def rolling_windows(tokens: list[int], bos: int, max_len: int) -> list[tuple[list[int], int]]:
    """(input ids, how many of its last predictions to score) windows that predict every token once."""
    full = [bos] + tokens
    out, scored = [], 0
    while scored < len(tokens):
        end = min(scored + max_len, len(tokens))  # predict targets full[scored+1 .. end]
        begin = max(0, end - max_len)
        out.append((full[begin:end] + [full[end]], end - scored))
        scored = end
    return out


def _make_lm_class():
    from lm_eval.api.model import LM

    class NanochatLM(LM):
        """lm-eval's view of a nanochat model (see the module docstring)."""

        def __init__(self, model, tokenizer, batch_size: int = 8, max_gen_toks: int = 256) -> None:
            super().__init__()
            self.model, self.tok = model, tokenizer
            self.batch_size = int(batch_size)
            self.max_gen_toks = int(max_gen_toks)
            self.max_length = int(model.config.sequence_len)

        @property
        def eot_token_id(self) -> int:
            return self.tok.bos_id

        @property
        def tokenizer_name(self) -> str:
            return "nanochat"

        def _pair_ids(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
            context, continuation = _split_space(context, continuation)
            return [self.tok.bos_id] + self.tok.encode(context), self.tok.encode(continuation)

        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            pairs = [self._pair_ids(*r.args[:2]) for r in requests]
            return loglikelihood_ids(self.model, self.tok, pairs, self.batch_size)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            out = []
            for r in requests:
                windows = rolling_windows(self.tok.encode(r.args[0]), self.tok.bos_id, self.max_length)
                pairs = [(w[: len(w) - n], w[len(w) - n :]) for w, n in windows]
                out.append(sum(lp for lp, _ in loglikelihood_ids(self.model, self.tok, pairs, self.batch_size)))
            return out

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            from nanochat.engine.engine import Engine

            engine = Engine(self.model, self.tok, calculator=lambda expr: None)
            out = []
            for r in requests:
                context, kwargs = r.args[0], dict(r.args[1] or {})
                until = kwargs.pop("until", None) or []
                until = [until] if isinstance(until, str) else list(until)
                max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
                temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", False) else 0.0
                max_new = max(1, min(max_new, self.max_length - 2))
                body = self.tok.encode(context)
                room = self.max_length - max_new - 1  # context tokens that fit beside <|bos|> and the answer
                ids = [self.tok.bos_id] + body[len(body) - min(len(body), room) :]
                answer, text = [], ""
                for column, _ in engine.generate(ids, max_tokens=max_new, temperature=temperature, seed=1234):
                    t = column[0]
                    if t in engine.terminal:
                        break
                    answer.append(t)
                    text = self.tok.decode(answer)  # special tokens by name: the model's own text
                    if any(u in text for u in until):
                        break
                cuts = [text.find(u) for u in until if u and u in text]
                out.append(text[: min(cuts)] if cuts else text)
            return out

    return NanochatLM


_LM_CLASS = None


def nanochat_lm(model, tokenizer, batch_size: int = 8, max_gen_toks: int = 256):
    """An lm-eval `LM` over an in-memory model and tokenizer."""
    global _LM_CLASS
    require_lm_eval()
    if _LM_CLASS is None:
        _LM_CLASS = _make_lm_class()
    return _LM_CLASS(model=model, tokenizer=tokenizer, batch_size=batch_size, max_gen_toks=max_gen_toks)


def run_harness(
    lm,
    tasks: list[str],
    *,
    include: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    log_samples: bool = False,
    offline: bool = False,
) -> dict[str, Any]:
    """lm-eval's simple_evaluate over `lm`; tasks by lm-eval name (or from YAMLs under `include`)."""
    require_lm_eval()
    if offline:  # lm-eval loads data through `datasets`: local files only
        os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    if include is not None and not os.path.isdir(include):
        raise NanochatError(f"--harness-include {include} is not a folder; point it at a folder of lm-eval task YAML files")
    manager = None
    if include:  # indexing lm-eval's own ~15,000 tasks takes half a minute: skip it when the folder has them all
        manager = TaskManager(include_path=include, include_defaults=False)
        if not set(tasks) <= set(manager.all_tasks):
            manager = None
    if manager is None:
        manager = TaskManager(include_path=include) if include else TaskManager()
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise NanochatError(f"lm-eval has no task {', '.join(unknown)}; see `lm_eval ls tasks`, or add your own YAML with --harness-include DIR")
    try:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, limit=limit, num_fewshot=num_fewshot, task_manager=manager, log_samples=log_samples, bootstrap_iters=0
        )
    except (ConnectionError, OSError) as e:
        raise NanochatError(f"lm-eval could not load a task's data ({type(e).__name__}: {str(e)[:200]}); without the internet, use local task data via --harness-include") from None
    if results is None:
        raise NanochatError("lm-eval returned no results")
    return results


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, float, int]]:
    """(task, metric, value, examples) for every numeric metric lm-eval reported (its stderr columns left out)."""
    rows = []
    counts = results.get("n-samples", {})
    for task, metrics in results.get("results", {}).items():
        n = counts.get(task, {}).get("effective", 0)
        for key, value in metrics.items():
            if key in ("alias", "sample_len") or "_stderr" in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            rows.append((task, key.split(",")[0], float(value), int(n)))
    return rows
