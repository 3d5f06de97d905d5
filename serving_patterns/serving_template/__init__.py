"""S12 Serving template: one server template, stamped into a server per model by a YAML config."""
