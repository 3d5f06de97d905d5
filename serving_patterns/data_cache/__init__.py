"""S9 Data cache: a proxy reads an item's features from a slow DWH once, then from Redis."""
