#!/usr/bin/env bash
# Builds Kubernetes (the API server, kubectl and the node's components), etcd, helm, kubeconform,
# health-lua (the Argo CD health checks' interpreter), kstatus (Flux's status library), dashboard-lint
# (the Grafana dashboard's linter) and Prometheus (promtool and the server) from source through the Go
# module proxy, and takes the Prometheus Operator's CRDs from its module.
# Each binary is built once into $TESTENV_DIR/bin; a binary already there with the right version is kept.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
TESTENV_DIR="${TESTENV_DIR:-$here/../../.testenv}"
bin="$TESTENV_DIR/bin"
work="$TESTENV_DIR/build"
mkdir -p "$bin" "$work"
export GOFLAGS="-buildvcs=false -mod=mod" CGO_ENABLED=0

stamp_ok() { [ -x "$bin/$1" ] && [ "$(cat "$bin/.$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" > "$bin/.$1.version"; }

build_kubernetes() {
  # k8s.io/kubernetes replaces its staging modules with local paths, which `go install` refuses;
  # a wrapper module pins each staging module to its published v0.x twin instead.
  local v="$KUBERNETES_VERSION" staging_v="v0${KUBERNETES_VERSION#v1}"
  # The control plane and the node (localnode/) come from one wrapper module and one version.
  local cmds=(kube-apiserver kubectl kube-controller-manager kube-scheduler kubelet kube-proxy) c missing=0
  for c in "${cmds[@]}"; do stamp_ok "$c" "$v" || missing=1; done
  [ "$missing" = 0 ] && return 0
  local d="$work/kubernetes"
  rm -rf "$d" && mkdir -p "$d" && cd "$d"
  go mod download -json "k8s.io/kubernetes@$v" >/dev/null
  local modfile
  modfile="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$v.mod"
  {
    echo "module testenv/kubernetes"
    echo "go $(awk '/^go /{print $2}' "$modfile")"
    echo "require k8s.io/kubernetes $v"
    awk '/=> .\/staging\/src\//{print "replace " $1 " => " $1 " '"$staging_v"'"}' "$modfile"
  } > go.mod
  local pkgs=()
  for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c@$v"); done
  go get "${pkgs[@]}"
  local minor="${v#v1.}"; minor="${minor%%.*}"
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    ld="$ld -X $pkg.buildDate=1970-01-01T00:00:00Z -X $pkg.gitCommit=0000000000000000000000000000000000000000"
  done
  for c in "${cmds[@]}"; do
    stamp_ok "$c" "$v" && continue
    go build -ldflags "$ld" -o "$bin/$c" "k8s.io/kubernetes/cmd/$c"
    stamp "$c" "$v"
  done
}

build_etcd() {
  # etcd's server module replaces its sibling modules with ../ paths; pin them all to the same tag.
  local v="$ETCD_VERSION"
  stamp_ok etcd "$v" && return 0
  local d="$work/etcd"
  rm -rf "$d" && mkdir -p "$d" && cd "$d"
  cat > go.mod <<MOD
module testenv/etcd
go 1.24
require (
	go.etcd.io/etcd/server/v3 $v
	go.etcd.io/etcd/api/v3 $v
	go.etcd.io/etcd/client/pkg/v3 $v
	go.etcd.io/etcd/client/v3 $v
	go.etcd.io/etcd/pkg/v3 $v
)
MOD
  go get "go.etcd.io/etcd/server/v3@$v"
  go build -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
  stamp etcd "$v"
}

build_plain() {  # name version package [ldflags] [stamp suffix]
  stamp_ok "$1" "$2${5:-}" && return 0
  GOBIN="$bin" go install -ldflags "-s -w ${4:-}" "$3@$2"
  stamp "$1" "$2${5:-}"
}

build_helm() {
  # Without a cluster (helm template, helm lint) helm assumes the Kubernetes version it was built
  # for; a plain `go install` leaves that at v1.20, which fails our chart's kubeVersion.
  local minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  local ld="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ld="$ld -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$minor"
  done
  build_plain helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "$ld" "+k8s1.$minor"
}

build_health_lua() {
  # The Argo CD health checks' interpreter (argocd/): our small program on gopher-lua, whose go.mod
  # and go.sum pin the versions Argo CD uses. Rebuilt when its source changes.
  local src="$here/health-lua" v
  v="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)"
  stamp_ok health-lua "$v" && return 0
  (cd "$src" && go build -ldflags "-s -w" -o "$bin/health-lua" .)
  stamp health-lua "$v"
}

build_kstatus() {
  # kstatus (sigs.k8s.io/cli-utils), what Flux and kpt compute an object's status with: our small
  # program on it, whose go.mod and go.sum pin the version. Rebuilt when its source changes.
  local src="$here/kstatus" v
  v="$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)"
  stamp_ok kstatus "$v" && return 0
  (cd "$src" && go build -ldflags "-s -w" -o "$bin/kstatus" .)
  stamp kstatus "$v"
}

build_dashboard_lint() {
  # The Grafana dashboard's linter: our small program on grafana-foundation-sdk (Grafana's dashboard
  # schema as Go types, decoded strictly) with the rules of grafana/dashboard-linter, which the module
  # proxy does not serve. Rebuilt when its source or the pinned SDK changes.
  local src="$here/dashboard-lint" v
  grep -q "github.com/grafana/grafana-foundation-sdk/go $GRAFANA_FOUNDATION_SDK_VERSION\$" "$src/go.mod" || {
    echo "dashboard-lint/go.mod does not require grafana-foundation-sdk $GRAFANA_FOUNDATION_SDK_VERSION (versions.env)" >&2
    return 1
  }
  v="$GRAFANA_FOUNDATION_SDK_VERSION-$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-16)"
  stamp_ok dashboard-lint "$v" && return 0
  (cd "$src" && go build -ldflags "-s -w" -o "$bin/dashboard-lint" .)
  stamp dashboard-lint "$v"
}

# The cluster's DNS and its default StorageClass, packed into images by hack/images/build.sh.
build_coredns() { build_plain coredns "$COREDNS_VERSION" github.com/coredns/coredns; }
build_local_path_provisioner() {
  build_plain local-path-provisioner "$LOCAL_PATH_PROVISIONER_VERSION" github.com/rancher/local-path-provisioner
}

build_prometheus() {
  # The module's v0.316.0 is Prometheus 3.16.0; the version is stamped so `promtool --version` says so.
  # The server is built without the `builtinassets` tag: the web UI's compiled assets are not in the
  # module (they come from an npm build), so it answers its API and /metrics but serves no UI.
  local v="$PROMETHEUS_VERSION" c missing=0
  for c in promtool prometheus; do stamp_ok "$c" "$v" || missing=1; done
  [ "$missing" = 0 ] && return 0
  local n="${v#v0.}" release
  release="$((${n%%.*} / 100)).$((${n%%.*} % 100)).${n#*.}"
  local ld="-s -w -X github.com/prometheus/common/version.Version=$release"
  ld="$ld -X github.com/prometheus/common/version.Revision=$v -X github.com/prometheus/common/version.Branch=HEAD"
  GOBIN="$bin" go install -ldflags "$ld" \
    "github.com/prometheus/prometheus/cmd/promtool@$v" "github.com/prometheus/prometheus/cmd/prometheus@$v"
  for c in promtool prometheus; do stamp "$c" "$v"; done
}

fetch_monitoring_crds() {
  # The Prometheus Operator's ServiceMonitor, PodMonitor and PrometheusRule CRDs, from its module's zip
  # (example/prometheus-operator-crd/): the chart test applies them to the test API server so that
  # kubeconform validates the chart's monitoring objects against their schemas. Nothing is built.
  local v="$PROMETHEUS_OPERATOR_VERSION" out="$TESTENV_DIR/crds/monitoring.coreos.com" dir k
  [ "$(cat "$out/.version" 2>/dev/null)" = "$v" ] && return 0
  dir="$(go mod download -json "github.com/prometheus-operator/prometheus-operator@$v" | awk -F'"' '/"Dir"/{print $4}')"
  rm -rf "$out" && mkdir -p "$out"
  for k in servicemonitors podmonitors prometheusrules; do
    install -m 644 "$dir/example/prometheus-operator-crd/monitoring.coreos.com_$k.yaml" "$out/"
  done
  echo "$v" > "$out/.version"
}

case "${1:-all}" in
  kubernetes) build_kubernetes ;;
  etcd) build_etcd ;;
  helm) build_helm ;;
  kubeconform) build_plain kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform ;;
  coredns) build_coredns ;;
  local-path-provisioner) build_local_path_provisioner ;;
  health-lua) build_health_lua ;;
  kstatus) build_kstatus ;;
  dashboard-lint) build_dashboard_lint ;;
  prometheus) build_prometheus ;;
  monitoring-crds) fetch_monitoring_crds ;;
  all)
    build_etcd
    build_helm
    build_plain kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform
    build_kubernetes
    build_coredns
    build_local_path_provisioner
    build_health_lua
    build_kstatus
    build_dashboard_lint
    build_prometheus
    fetch_monitoring_crds
    ;;
  *) echo "usage: $0 [all|kubernetes|etcd|helm|kubeconform|coredns|local-path-provisioner|health-lua|kstatus|dashboard-lint|prometheus|monitoring-crds]" >&2; exit 2 ;;
esac
