"""S11 Multiple stage prediction: a light model answers at once, a heavy model answers later."""
