"""Metrics, logs and traces: what operators see of the service."""
