"""Q1 Shadow AB test: clients get model A; B and a retrain of A get a mirrored copy, compared."""
