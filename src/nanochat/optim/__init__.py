"""Optimizers: Muon (Polar Express, NorMuon) and AdamW in one distributed optimizer, and schedules.

    from nanochat.optim import build_optimizer
"""

from nanochat.optim.combined import MuonAdamW, build_optimizer, flatten_state_dict, unflatten_state_dict

__all__ = ["MuonAdamW", "build_optimizer", "flatten_state_dict", "unflatten_state_dict"]
