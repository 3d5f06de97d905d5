"""S6 Microservice vertical: predictors in a chain, each stage deciding whether the next runs."""
