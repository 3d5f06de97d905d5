"""O4 Prediction log: every request logged to a Redis stream; a consumer stores it once."""
