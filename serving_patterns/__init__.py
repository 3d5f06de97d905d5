"""Serving patterns: how a trained model is put behind an interface and answers requests."""
