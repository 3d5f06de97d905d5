"""Operation patterns: how models in production are deployed, versioned, logged and steered."""
