"""S13 Edge prediction: the model ships to the device, which verifies, caches and runs it."""
