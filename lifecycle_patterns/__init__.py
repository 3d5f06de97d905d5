"""Lifecycle patterns: how training and serving join up, from a training run to a served model."""
