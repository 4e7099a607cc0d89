"""`nanochat rl`'s training loop on a toy task: run plainly for one process, or under torchrun (gloo on
CPU) for several, by test_rl (NANOCHAT_HOME holds the starting checkpoint)."""

from __future__ import annotations


class EvenLength(list):
    """A toy task whose reward (an even number of characters) is hit about half the time by a random model."""

    def __init__(self):
        super().__init__({"messages": [{"role": "user", "content": f"Question {i}?"}]} for i in range(6))

    def reward(self, conversation, completion):
        return float(len(completion) % 2 == 0)

    def evaluate(self, conversation, completion):
        return self.reward(conversation, completion) > 0


def toy_config(**overrides):
    from nanochat.train.rl import RLConfig

    base = dict(device="cpu", examples_per_step=2, num_samples=4, device_batch_size=2, max_new_tokens=3, eval_every=-1, save_every=1,
                num_iterations=3, init_lr_frac=1.0, matrix_lr=0.05, embedding_lr=0.5, unembedding_lr=0.05)  # fmt: skip
    return RLConfig(**{**base, **overrides})


def main() -> None:
    import torch

    from nanochat.train import rl

    torch.set_num_threads(1)
    rl.load_tasks = lambda split, rank: (EvenLength(), EvenLength(), "toy", "toy")
    rl.run_rl(toy_config(num_iterations=2, eval_every=2, eval_examples=5, resume="never", save_every=-1))


if __name__ == "__main__":
    main()
