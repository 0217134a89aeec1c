"""A local workload runner: plays the controller-manager and the kubelet for the StatefulSets and
Deployments the operator creates, running each Pod as local processes in its own Linux namespaces.

Development and test tooling only (`make dev`, the e2e tests); see docs/dev-cluster.md. Needs root:
network namespaces, veth pairs, a bridge and private mount namespaces.
"""
