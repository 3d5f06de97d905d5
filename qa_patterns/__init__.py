"""QA patterns: shadow and online A/B tests, and the loading test."""
