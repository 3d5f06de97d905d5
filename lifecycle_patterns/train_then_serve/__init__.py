"""L1 Train-then-serve: training makes candidates, a human approves, a deploy switches serving."""
