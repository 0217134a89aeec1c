"""kopf registration only: each handler parses, builds, applies through kube/ and records status."""
