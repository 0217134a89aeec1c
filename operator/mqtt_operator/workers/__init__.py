"""Talking to running bridge workers: their Prometheus metrics."""
