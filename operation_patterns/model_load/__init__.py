"""O2 Model-load: one generic server downloads the model its environment names at start-up."""
