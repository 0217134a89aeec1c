"""Talking to Kafka clusters (the operator checks a connection before workers start)."""
