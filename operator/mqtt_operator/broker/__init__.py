"""Talking to a running broker: Mosquitto's dynamic security over $CONTROL, and planning what to send.

`client.DynsecClient` is the only module here that does I/O; `model`, `commands`, `plan` and `acl`
are pure. Nothing in this package imports kopf.
"""
