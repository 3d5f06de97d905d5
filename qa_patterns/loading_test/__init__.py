"""Q3 Loading test: Locust drives 1 and 2 predictor processes behind a balancer; a gate file
passes or fails the run."""
