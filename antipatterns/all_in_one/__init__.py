"""SA2 All-in-one: three models in one monolith, side by side with one service per model."""
