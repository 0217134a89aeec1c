"""The project's real test environment: etcd, kube-apiserver, Kafka and Mosquitto as local processes.

Installed by `make testenv` (hack/testenv/*.sh) into one cached folder, started here on free loopback
ports. Used by the pytest fixtures in tests/conftest.py and by `make dev` (python -m testenv).
"""
