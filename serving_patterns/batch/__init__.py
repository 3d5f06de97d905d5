"""S4 Batch: a scheduled (or on-demand) job predicts the DWH rows that have no result yet."""
