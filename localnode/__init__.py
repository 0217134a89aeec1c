"""A real single-node Kubernetes on this machine, without Docker: `python -m localnode`.

etcd, the control plane, containerd, the kubelet and kube-proxy run in a network and mount
namespace of their own, reached from the host over one veth pair (docs/dev-cluster.md).
"""
