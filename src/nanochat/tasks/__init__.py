"""The datasets of each task, with their scoring: MMLU, ARC, GSM8K, HumanEval, SpellingBee,
SimpleSpelling, SmolTalk, CustomJSON, identity conversations, demo arithmetic; plus TaskMixture and TaskSequence.

Import the task classes from their modules (e.g. `from nanochat.tasks.gsm8k import GSM8K`). The chat-eval
tasks that `nanochat eval --tasks` runs, with their titles, chance baselines and ChatCORE membership, are
registered in `nanochat.tasks.registry`; `train/sft_data.py` holds the SFT mixtures of `--data web|demo`.
"""
