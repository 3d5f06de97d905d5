"""S5 Prep-pred: a proxy chains feature retrieval, preprocessing and prediction services."""
