"""QA1 Offline-only (antipattern): the model that wins on the held-out set loses the online KPI,
and the online A/B test (Q2's proxy, report and guard) catches it."""
