"""Tasks: datasets for SFT, RL and evaluation, each with its rendering and scoring."""
