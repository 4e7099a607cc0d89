"""The run skeleton of every training stage (train/loop.py TrainingRun): the order of evaluations, saves and steps,
the non-finite-loss guard and the stop signal, driven by a toy stage that writes down what it was asked to do."""

import json
import math
import os
import signal

import pytest

from nanochat.common.errors import NanochatError
from nanochat.train.loop import Stage, StepResult, TrainingRun


class ToyStage(Stage):
    """Each step's loss comes from `losses` (one entry per forward/backward call); every call is logged."""

    def __init__(self, run: TrainingRun, n: int, losses: list[float], max_bad_steps: int = 0, stop_at_call: int | None = None):
        self.run, self.n, self.losses, self.max_bad_steps = run, n, list(losses), max_bad_steps
        self.bad_steps_fix = "lower the toy LR"
        self.stop_at_call = stop_at_call
        self.calls: list[tuple] = []
        self.closed = False

    def is_last(self, step):
        return step == self.n

    def evaluate(self, step, last):
        self.calls.append(("eval", step, last))

    def save(self, step):
        self.calls.append(("save", step))

    def forward_backward(self, step, stop_requested):
        k = sum(1 for c in self.calls if c[0] == "fb")
        self.calls.append(("fb", step))
        if self.stop_at_call == k:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler only sets a flag; the next sync sees it
        return StepResult(self.losses[k], self.run.stop.requested)

    def discard(self):
        self.calls.append(("discard",))

    def update(self, step, loss):
        self.calls.append(("update", step))

    def record(self, step, dt, loss):
        return f"step {step}", {"kind": "train", "step": step - 1, "loss": loss}

    def close(self):
        self.closed = True


def _run(tmp_path, n=4, start=0, resumed=False, save_every=-1):
    return TrainingRun("toy", tmp_path, n, start, resumed, rank=0, world=1, device_type="cpu", save_every=save_every,
                       keep_last=None, loop_state={}, clock_warmup=0)


def _records(tmp_path):
    return [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_steps_evaluate_at_the_top_save_on_cadence_and_at_the_end(tmp_path):
    run = _run(tmp_path, n=4, save_every=2)
    stage = ToyStage(run, 4, [1.0, 2.0, 3.0, 4.0])
    run.run(stage)
    # by hand: eval at the top of steps 0..4 (the last one flagged), saves after steps 2 and 4, none at step 0
    assert stage.calls == [
        ("eval", 0, False), ("fb", 0), ("update", 0),
        ("eval", 1, False), ("fb", 1), ("update", 1),
        ("eval", 2, False), ("save", 2), ("fb", 2), ("update", 2),
        ("eval", 3, False), ("fb", 3), ("update", 3),
        ("eval", 4, True), ("save", 4),
    ]
    assert run.step == 4 and not run.stopped_by_signal and stage.closed
    assert [(r["step"], r["loss"]) for r in _records(tmp_path)] == [(0, 1.0), (1, 2.0), (2, 3.0), (3, 4.0)]


def test_a_non_finite_step_repeats_without_update_or_second_evaluation(tmp_path):
    run = _run(tmp_path, n=2)
    stage = ToyStage(run, 2, [1.0, math.nan, 2.0], max_bad_steps=3)
    run.run(stage)
    assert stage.calls == [
        ("eval", 0, False), ("fb", 0), ("update", 0),
        ("eval", 1, False), ("fb", 1), ("discard",), ("fb", 1), ("update", 1),  # step 1 again, not evaluated twice
        ("eval", 2, True), ("save", 2),
    ]
    recs = _records(tmp_path)
    assert [r["kind"] for r in recs] == ["train", "skip", "train"] and recs[1]["step"] == 1


def test_too_many_non_finite_steps_stop_with_the_stages_fix(tmp_path):
    run = _run(tmp_path, n=5)
    stage = ToyStage(run, 5, [1.0, math.inf, math.nan], max_bad_steps=2)
    with pytest.raises(NanochatError, match=r"2 steps in a row had a non-finite loss at step 1; lower the toy LR"):
        run.run(stage)
    assert stage.closed and ("update", 1) not in stage.calls


def test_a_stage_without_the_guard_updates_after_a_non_finite_loss(tmp_path):
    run = _run(tmp_path, n=2)
    stage = ToyStage(run, 2, [math.nan, 1.0])  # max_bad_steps 0: the stage decides (RL skips only the update)
    run.run(stage)
    assert ("update", 0) in stage.calls and ("discard",) not in stage.calls


def test_a_stop_signal_saves_the_next_step_and_returns(tmp_path):
    run = _run(tmp_path, n=10)
    stage = ToyStage(run, 10, [1.0] * 10, stop_at_call=2)
    old = signal.getsignal(signal.SIGTERM)
    run.run(stage)
    assert signal.getsignal(signal.SIGTERM) == old  # handlers restored
    assert stage.calls[-2:] == [("eval", 3, False), ("save", 3)]
    assert run.stopped_by_signal and run.step == 3
    assert run.stopped_line() == "SIGTERM: saved step 3 and stopped; `nanochat toy ... --resume auto` continues"


def test_a_run_resumed_at_its_end_saves_nothing_new(tmp_path):
    run = _run(tmp_path, n=3, start=3, resumed=True)
    stage = ToyStage(run, 3, [])
    run.run(stage)
    assert stage.calls == [("eval", 3, True)]
