"""mqtt-operator: MQTT brokers and their data integrations as Kubernetes custom resources."""

__version__ = "0.1.0"
