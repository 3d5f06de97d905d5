"""T3 parameter and architecture search: Optuna trials run by several worker processes."""
