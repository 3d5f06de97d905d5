"""O4 Prediction log: proxy and predictor log every request to a Redis stream; a consumer stores it."""
