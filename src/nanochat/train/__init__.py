"""Training loops: scaling rules, pretraining, SFT, RL, the speedrun, and what the loops share."""
