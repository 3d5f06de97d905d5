"""S1 Web single: REST API, preprocessing and model in one process, replicated behind an LB."""
