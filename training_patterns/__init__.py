"""Training patterns: how models are trained, searched and registered (T1-T3)."""
