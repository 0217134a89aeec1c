#!/usr/bin/env bash
# `make e2e-kind`: the e2e suite (e2e/) on a kind cluster, as a user installs the operator there:
# the image built from the Dockerfile and loaded into kind, the chart installed with it (cluster-wide:
# every test makes its own namespace), and a Kafka named kafka-bootstrap.kafka.svc:9092 (kafka.yaml).
# The tests reach the brokers by `kubectl port-forward` and Kafka on a NodePort (e2e/targets.py).
#
# Needs a Docker engine. Written on a machine without one: never run there (docs/dev-cluster.md).
# E2E_KIND_KEEP=1 keeps the cluster afterwards; PYTEST_ARGS are passed to pytest.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=SCRIPTDIR/versions.env
source "$here/versions.env"
TESTENV_DIR="${TESTENV_DIR:-$repo/.testenv}"
export TESTENV_DIR
bin="$TESTENV_DIR/bin"
py="$repo/.venv/bin/python"
name="${E2E_KIND_CLUSTER:-mqtt-operator-e2e}"
state="$TESTENV_DIR/run/kind"
kubeconfig="$state/kubeconfig"
# Any tag but `latest`, whose default pull policy is Always: kind's node has the image, no registry does.
image="mqtt-operator:e2e"
release="mqtt-operator"

if ! command -v docker >/dev/null 2>&1; then
  echo "make e2e-kind: needs Docker (to build the image and to run kind's node), and there is no docker" >&2
  echo "command here. Install Docker Engine, or run the same tests on the local cluster: make e2e" >&2
  exit 2
fi
if ! docker_error="$(docker info 2>&1 >/dev/null)"; then
  echo "make e2e-kind: docker is installed but its engine does not answer (docker info):" >&2
  echo "  ${docker_error//$'\n'/$'\n'  }" >&2
  echo "Start the Docker engine, or run the same tests on the local cluster: make e2e" >&2
  exit 2
fi

# The tools, pinned: kubectl and helm from the test environment, kind from e2e/kind/versions.env;
# mosquitto_ctrl and kcat, which the tests run on this machine, from Debian.
bash "$repo/hack/testenv/install-debian.sh"
bash "$repo/hack/testenv/build-go-tools.sh" kubernetes
bash "$repo/hack/testenv/build-go-tools.sh" helm
if [ "$(cat "$bin/.kind.version" 2>/dev/null)" != "$KIND_VERSION" ] || [ ! -x "$bin/kind" ]; then
  GOBIN="$bin" CGO_ENABLED=0 go install "sigs.k8s.io/kind@$KIND_VERSION"
  echo "$KIND_VERSION" > "$bin/.kind.version"
fi
export PATH="$bin:$PATH"
kubectl() { command kubectl --kubeconfig "$kubeconfig" "$@"; }

diagnose() {
  echo "--- make e2e-kind failed; the cluster as it was:" >&2
  kubectl get pods,statefulsets,mqtt --all-namespaces -o wide >&2 || true
  kubectl -n mqtt-system logs "deployment/$release" --tail=200 >&2 || true
  kubectl -n kafka logs deployment/kafka --tail=50 >&2 || true
  rm -rf "$state/logs"
  if kind export logs "$state/logs" --name "$name" >/dev/null 2>&1; then
    echo "--- kind's logs (nodes, kubelet, containers): $state/logs" >&2
  fi
}
finish() {
  local status=$?
  [ "$status" -eq 0 ] || diagnose
  if [ "${E2E_KIND_KEEP:-0}" = 1 ]; then
    echo "E2E_KIND_KEEP=1: cluster $name kept; KUBECONFIG=$kubeconfig; remove it: kind delete cluster --name $name"
  else
    kind delete cluster --name "$name" >/dev/null 2>&1 || true
  fi
  exit "$status"
}

mkdir -p "$state"
# A cluster of this name left by an interrupted run would carry its objects into this one.
kind delete cluster --name "$name" >/dev/null 2>&1 || true
trap finish EXIT

docker build --tag "$image" "$repo"
kind create cluster --name "$name" --image "$KIND_NODE_IMAGE" --config "$here/cluster.yaml" \
  --kubeconfig "$kubeconfig" --wait 180s
kind load docker-image "$image" --name "$name"

kubectl apply -f "$here/kafka.yaml"
helm install "$release" "$repo/charts/mqtt-operator" --kubeconfig "$kubeconfig" \
  --namespace mqtt-system --create-namespace \
  --set image.repository="${image%%:*}" --set image.tag="${image#*:}" --set image.pullPolicy=Never \
  --set rbac.clusterWide=true \
  --wait --timeout 5m
kubectl -n kafka rollout status deployment/kafka --timeout=5m
# Kafka answers on the host listener (a metadata request, as kcat -L makes) before the tests start.
for _ in $(seq 60); do
  kcat -b 127.0.0.1:30092 -L -m 5 >/dev/null 2>&1 && break
  sleep 2
done
kcat -b 127.0.0.1:30092 -L -m 5 >/dev/null

cd "$repo"
# Only the kind target: the local one runs in `make test` / `make e2e`. Local-only tests are skipped
# with their reason in the summary.
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of arguments
E2E_TARGETS=kind E2E_KIND_KUBECONFIG="$kubeconfig" E2E_KIND_KAFKA=127.0.0.1:30092 \
  "$py" -m pytest e2e ${PYTEST_ARGS:-}
