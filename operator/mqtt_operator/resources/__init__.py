"""Pure builders: a typed model in, the desired Kubernetes objects out (plain manifests, no I/O)."""
