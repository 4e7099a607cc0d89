"""Chat evals: categorical tasks by letter logits, generative tasks by sampling, and ChatCORE.

- Categorical (ARC-Easy, ARC-Challenge, MMLU): prompts rendered for completion are run in batches
  (right-padded with BOS, so causal attention leaves each prompt's last position untouched); the
  logits at each prompt's last position are restricted to the task's letter tokens and the argmax
  letter is the answer. Every letter must be a single token.
- Generative (GSM8K, HumanEval, SpellingBee): `num_samples` completions per problem; the problem
  passes if any of them does (pass@k with k = num_samples).
- ChatCORE: the mean over its tasks of `(acc - chance) / (1 - chance)`; the tasks and their chance
  accuracies (0.25 for four letters, 0 for free answers) come from `nanochat.tasks.registry`.

The model is anything callable as `model(ids) -> logits (B, T, vocab)`; generation goes through a
`generate(prompts, num_samples) -> per prompt, num_samples completion token lists` function, by
default the Engine's `generate_batch`. Problems are strided over ranks and the counts all-reduced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from nanochat.common.errors import NanochatError
from nanochat.tasks import registry



@dataclass
class ChatResult:
    passed: int
    total: int
    too_long: int = 0

    @property
    def accuracy(self) -> float:
        return self.passed / self.total if self.total else float("nan")


def _dist():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist, dist.get_rank(), dist.get_world_size()
    return None, 0, 1


def _reduce(passed: int, total: int, device) -> ChatResult:
    import torch

    dist, _, _ = _dist()
    if dist is not None:
        t = torch.tensor([passed, total], dtype=torch.long, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        passed, total = int(t[0]), int(t[1])
    return ChatResult(passed, total)


def letter_token_ids(tokenizer, letters) -> list[int]:
    ids = []
    for letter in letters:
        enc = tokenizer.encode(letter)
        if len(enc) != 1:
            raise NanochatError(f"answer letter {letter!r} is {len(enc)} tokens in this tokenizer, not 1; categorical evals need single-token letters")
        ids.append(enc[0])
    return ids


def run_categorical(model, tokenizer, task, device, batch_size: int = 8, max_problems: int | None = None, on_item: Callable[[], None] | None = None) -> ChatResult:
    """Accuracy of the letter with the highest logit at the end of each prompt."""
    import torch

    dist, rank, world = _dist()
    n = len(task) if max_problems is None or max_problems < 0 else min(len(task), max_problems)
    starts = list(range(0, n, batch_size))[rank::world]  # whole batches strided over ranks
    passed = total = 0
    for s in starts:
        convs = [task[i] for i in range(s, min(s + batch_size, n))]
        prompts = [tokenizer.render_for_completion(c["messages"]) for c in convs]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tokenizer.bos_id, dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        with torch.no_grad():
            logits = model(ids.to(device))
        for i, (conv, p) in enumerate(zip(convs, prompts)):
            letters = conv["letters"]
            letter_ids = letter_token_ids(tokenizer, letters)
            focus = logits[i, len(p) - 1, letter_ids]
            answer = letters[int(focus.argmax())]
            passed += int(task.evaluate(conv, answer))
            total += 1
            if on_item is not None:
                on_item()
    return _reduce(passed, total, device)


def engine_generate(model, tokenizer, max_tokens: int = 512, temperature: float = 0.0, top_k: int | None = 50, seed: int = 42) -> Callable:
    """A `generate(prompts, num_samples)` backed by the Engine (tool calls included): for each prompt,
    `num_samples` completions (token lists without the prompt and the terminal token)."""
    try:
        from nanochat.engine.engine import Engine
    except ImportError as e:
        raise NanochatError("generative evals need the inference engine (nanochat.engine.engine), which is not in this build; evaluate categorical tasks only") from e
    engine = Engine(model, tokenizer)

    def generate(prompts: list[list[int]], num_samples: int) -> list[list[list[int]]]:
        sequences, _masks = engine.generate_batch(prompts, num_samples=num_samples, max_tokens=max_tokens, temperature=temperature, top_k=top_k, seed=seed)
        # rows are prompt-major: prompt 0's samples first
        return [sequences[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]

    return generate


def run_generative(
    generate: Callable,
    tokenizer,
    task,
    device,
    num_samples: int = 1,
    max_problems: int | None = None,
    on_item: Callable[[], None] | None = None,
    batch_size: int = 1,
    max_prompt_len: int | None = None,
) -> ChatResult:
    """pass@num_samples: a problem passes if any sampled completion passes.

    `batch_size` problems go to `generate` together. A prompt of `max_prompt_len` tokens or more
    (no room left to answer in the model's context) counts as failed, and is counted in `too_long`."""
    _, rank, world = _dist()
    n = len(task) if max_problems is None or max_problems < 0 else min(len(task), max_problems)
    mine = list(range(rank, n, world))
    passed = total = too_long = 0
    for s in range(0, len(mine), max(1, batch_size)):
        convs = [task[i] for i in mine[s : s + batch_size]]
        prompts = [tokenizer.render_for_completion(c["messages"]) for c in convs]
        fits = [i for i, p in enumerate(prompts) if max_prompt_len is None or len(p) < max_prompt_len]
        outs = generate([prompts[i] for i in fits], num_samples) if fits else []
        completions = {i: o for i, o in zip(fits, outs)}
        for i, conv in enumerate(convs):
            texts = [tokenizer.decode(c) for c in completions.get(i, [])]
            too_long += i not in completions
            passed += int(any(task.evaluate(conv, t) for t in texts))
            total += 1
            if on_item is not None:
                on_item()
    result = _reduce(passed, total, device)
    result.too_long = int(_reduce(too_long, 0, device).passed)
    return result


def _centered(name: str, accuracy: float) -> float:
    chance = registry.spec(name).chance
    return (accuracy - chance) / (1.0 - chance)


def chatcore(accuracies: dict[str, float]) -> float | None:
    """ChatCORE over all its tasks, or None unless every one of them was evaluated."""
    names = registry.chatcore_names()
    if not all(name in accuracies for name in names):
        return None
    return sum(_centered(n, accuracies[n]) for n in names) / len(names)


def chatcore_partial(accuracies: dict[str, float]) -> float | None:
    """The same mean over whichever of its tasks were evaluated (labelled as partial by callers)."""
    names = [n for n in registry.chatcore_names() if n in accuracies]
    if not names:
        return None
    return sum(_centered(n, accuracies[n]) for n in names) / len(names)


def evaluate_chatcore(
    model,
    tokenizer,
    device,
    categorical_max: int | None = None,
    generative_max: int | None = 24,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    tasks: tuple[str, ...] | None = None,
) -> dict[str, float]:
    """Accuracy on each chat task plus `chatcore` (the training-time eval of SFT: every categorical
    problem, a few generative ones; default: ChatCORE's tasks). `chatcore_cat` is the same mean over the
    categorical tasks only."""
    out: dict[str, float] = {}
    generate = None
    for name in registry.chatcore_names() if tasks is None else tasks:
        task = registry.build(name)
        if task.eval_type == "categorical":
            out[name] = run_categorical(model, tokenizer, task, device, batch_size, categorical_max).accuracy
        else:
            if generate is None:
                generate = engine_generate(model, tokenizer, max_new_tokens, temperature=0.0)
            from nanochat.eval.core import model_max_len

            out[name] = run_generative(generate, tokenizer, task, device, 1, generative_max, None, batch_size, model_max_len(model)).accuracy
    cc = chatcore(out)
    if cc is not None:
        out["chatcore"] = cc
    cat = [n for n in out if n in registry.chatcore_names() and registry.spec(n).eval_type == "categorical"]
    if cat:
        out["chatcore_cat"] = sum(_centered(n, out[n]) for n in cat) / len(cat)
    return out
