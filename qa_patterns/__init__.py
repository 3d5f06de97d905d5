"""QA patterns: how a new model is checked against the live one before and while it serves."""
