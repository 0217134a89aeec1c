"""Reconcile logic per kind, without kopf: parse -> build -> apply (through kube/ and broker/) -> outcome."""
