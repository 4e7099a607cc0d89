"""Optimizers: Muon (Polar Express, NorMuon) and AdamW in one distributed optimizer, and schedules."""
