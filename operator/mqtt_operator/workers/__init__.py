"""What the operator knows of the worker Pods (Pods running the bridge program): their objects in the
cluster (index.py) and their Prometheus metrics (scrape.py)."""
