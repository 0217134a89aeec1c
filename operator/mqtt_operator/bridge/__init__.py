"""The bridge program (`mqtt-operator bridge`) that workers run: components, pipelines, metrics."""
