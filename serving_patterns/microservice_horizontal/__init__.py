"""S7 Microservice horizontal: independent models answer in parallel; the proxy merges them."""
