"""QA patterns: how a new model is checked against the live one before it takes all traffic."""
