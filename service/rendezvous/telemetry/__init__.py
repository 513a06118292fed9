"""Metrics and logging (tracing arrives with the observability issue)."""
