"""The loss registry (registry.py: each loss's kind, options and paper; torch-free, read by the config and its
validation) and the formulas registered in it: paired.py (preference_loss) and unpaired.py (KTO's unpaired_loss)."""
