"""O1 Model-in-image: the model is baked with its server into an immutable, versioned bundle."""
