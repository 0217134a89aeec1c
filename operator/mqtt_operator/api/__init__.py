"""Typed, frozen models of the custom resources; pure, no I/O."""
