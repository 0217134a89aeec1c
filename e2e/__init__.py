"""Whole-system tests: the examples applied through the API server, checked from devices to Kafka."""
