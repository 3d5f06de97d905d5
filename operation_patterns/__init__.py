"""Operation patterns: how models are packaged, loaded, versioned, logged and watched."""
