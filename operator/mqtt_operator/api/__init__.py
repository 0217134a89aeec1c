"""Typed, frozen models of the custom resources; pure, no I/O.

A CR is parsed once, at the top of its handler, into the model of its kind; everything below works
on the model. The models mirror the CRDs in crds/ (a unit test checks every CRD field has one).
"""
