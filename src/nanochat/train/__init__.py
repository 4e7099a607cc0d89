"""Training loops: scaling rules, pretraining, and what the loops share."""
