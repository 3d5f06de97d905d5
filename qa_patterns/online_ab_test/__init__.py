"""Q2 Online AB test: a weighted, sticky split of real users between models A and B, judged by
their conversions with the statistics of experimentation platforms, and guarded."""
