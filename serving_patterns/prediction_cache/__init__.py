"""S8 Prediction cache: a proxy answers repeated inputs from Redis, keyed by model version."""
