"""The bridge worker (`mqtt-operator bridge`): sources, sinks, the at-least-once pipeline, metrics."""
