"""Antipatterns, each built beside its fix and measured side by side."""
