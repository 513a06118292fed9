"""Load generators and benchmarks for Rendezvous (not tests: they print figures)."""
