"""The only code that calls the Kubernetes API: server-side apply, status, events."""
