"""S2 Synchronous: the caller waits for the prediction before it can take its next step."""
