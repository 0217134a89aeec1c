#!/usr/bin/env bash
# Builds the images the single-node cluster runs, without Docker: Debian base images from Debian's
# packages (mmdebstrap), then each Dockerfile with buildah, each pushed to an OCI archive that
# containerd imports. An image is rebuilt only when its inputs change (docs/images.md).
#
#   hack/images/build.sh [--force] [NAME ...]   no NAME: every image; --list prints the names
#
# Writes $TESTENV_DIR/images/<name>.tar and $TESTENV_DIR/images/images.json:
#   {"<name>": {"ref": ..., "archive": ..., "inputs": <sha256 of the inputs>, "id": <image id>}}
# buildah's storage stays under $TESTENV_DIR/buildah; nothing is left mounted or running afterwards.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=../testenv/versions.env
source "$repo/hack/testenv/versions.env"
TESTENV_DIR="${TESTENV_DIR:-$repo/.testenv}"
mkdir -p "$TESTENV_DIR"
# pwd -P: the path the tests see (testenv/paths.py resolves links), also when .testenv is a symlink.
TESTENV_DIR="$(cd "$TESTENV_DIR" && pwd -P)"
out="$TESTENV_DIR/images"
stage="$out/context"
store="$TESTENV_DIR/buildah"
manifest="$out/images.json"
# The CA bundle pip needs behind the TLS-intercepting proxy; mounted for the pip step only.
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
ISOLATION="${BUILDAH_ISOLATION:-chroot}"
ALL=(mqtt-operator mosquitto kafka rocketmq battery-alerts pause coredns local-path-provisioner)
OPERATOR_VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml" | head -n1)"

usage() { echo "usage: $0 [--force] [--list] [${ALL[*]// /|}]..." >&2; exit 2; }

install_tools() {
  local need=()
  command -v buildah >/dev/null || need+=(buildah)
  command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
  command -v runc >/dev/null || need+=(runc)
  command -v gcc >/dev/null || need+=(gcc)
  [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -n "$(find /usr/lib -name libc.a -print -quit)" ] || need+=(libc6-dev)
  command -v python3 >/dev/null || need+=(python3)
  [ ${#need[@]} -eq 0 ] && return 0
  local sudo=; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

bah() { buildah --root "$store/storage" --runroot "$store/run" --storage-driver overlay "$@"; }

# --- Debian base images ---------------------------------------------------------------------------

# Docker's debian:*-slim leaves out the same paths (kept for every later apt-get in the images).
DPKG_EXCLUDES=(
  path-exclude=/usr/share/man/* path-exclude=/usr/share/info/* path-exclude=/usr/share/locale/*
  path-exclude=/usr/share/doc/* path-include=/usr/share/doc/*/copyright path-exclude=/usr/share/lintian/*
)

base_ref() { echo "docker.io/library/debian:$1-slim"; }

# Everything that decides what the base image holds, as text: its hash is the base's inputs.
# Merged /usr set up the way debootstrap does it: otherwise bookworm's init-system-helpers pulls in
# usrmerge, and with it perl (45 MB).
MERGED_USR_HOOK=/usr/share/mmdebstrap/hooks/maybe-merged-usr

base_recipe() {
  local suite="$1"
  echo "mmdebstrap --variant=minbase --hook-dir=$MERGED_USR_HOOK $suite"
  printf 'dpkg-opt %s\n' "${DPKG_EXCLUDES[@]}"
  base_sources "$suite"
}

base_sources() {
  echo "deb http://deb.debian.org/debian $1 main"
  echo "deb http://deb.debian.org/debian $1-updates main"
  echo "deb http://deb.debian.org/debian-security $1-security main"
}

base_inputs() { base_recipe "$1" | sha256sum | cut -d' ' -f1; }

build_base() {
  local suite="$1" ref inputs stamp
  ref="$(base_ref "$suite")"
  inputs="$(base_inputs "$suite")"
  stamp="$out/.base-$suite.inputs"
  if [ -z "$FORCE" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ] && bah inspect --type image "$ref" >/dev/null 2>&1; then
    return 0
  fi
  local began=$SECONDS tar="$out/.rootfs-$suite.tar" sources=() opts=() line c
  while IFS= read -r line; do sources+=("$line"); done < <(base_sources "$suite")
  for line in "${DPKG_EXCLUDES[@]}"; do opts+=("--dpkgopt=$line"); done
  echo ">> base $ref: mmdebstrap $suite"
  local log="$out/.mmdebstrap-$suite.log"
  if ! mmdebstrap --quiet --variant=minbase --hook-dir="$MERGED_USR_HOOK" --format=tar "${opts[@]}" \
    "$suite" "$tar" "${sources[@]}" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    return 1
  fi
  c="$(bah from --pull=never scratch)"
  containers+=("$c")
  bah add --quiet "$c" "$tar" /
  bah config --cmd bash \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label "org.opencontainers.image.description=Debian $suite minbase from Debian's packages" "$c"
  bah commit --quiet --rm "$c" "$ref" >/dev/null
  rm -f "$tar"
  echo "$inputs" > "$stamp"
  echo ">> base $ref built in $((SECONDS - began)) s"
}

# --- the images -----------------------------------------------------------------------------------

# Sets ref, dir (its folder: Dockerfile and files), ctx (build context), args (build args) and
# extra (more inputs, text) for image $1.
define() {
  dir="$repo/images/$1" ctx= args=() extra=
  case "$1" in
    mqtt-operator)
      ref="localhost/mqtt-operator:$OPERATOR_VERSION" dir="$repo" ctx="$repo" ;;
    mosquitto)
      ref="localhost/mosquitto:$MOSQUITTO_IMAGE_VERSION" args=(MOSQUITTO_VERSION="$MOSQUITTO_IMAGE_VERSION")
      extra="$(plugin_sources)" ;;
    kafka)
      ref="localhost/kafka:$KAFKA_VERSION" args=(KAFKA_VERSION="$KAFKA_VERSION")
      extra="$(jar_listing kafka "$TESTENV_DIR/kafka/$KAFKA_VERSION" libs)" ;;
    rocketmq)
      ref="localhost/rocketmq:$ROCKETMQ_VERSION" args=(ROCKETMQ_VERSION="$ROCKETMQ_VERSION")
      extra="$(jar_listing rocketmq "$TESTENV_DIR/rocketmq/$ROCKETMQ_VERSION" lib)" ;;
    battery-alerts)
      ref="localhost/battery-alerts:$OPERATOR_VERSION" dir="$repo/images/function" ;;
    pause)
      ref="localhost/pause:3.10" extra="$(gcc --version | head -n1)" ;;
    coredns)
      ref="localhost/coredns:$COREDNS_VERSION" extra="$(binary_hash coredns "$COREDNS_VERSION")" ;;
    local-path-provisioner)
      ref="localhost/local-path-provisioner:$LOCAL_PATH_PROVISIONER_VERSION"
      extra="$(binary_hash local-path-provisioner "$LOCAL_PATH_PROVISIONER_VERSION")" ;;
    *) echo "unknown image $1 (known: ${ALL[*]})" >&2; exit 2 ;;
  esac
}

# The jars are fixed per version: their names and sizes stand for their contents (hashing 150 MB
# of jars on every run would cost seconds).
jar_listing() {  # kafka|rocketmq dir subdir
  [ -f "$2/.complete" ] || bash "$repo/hack/testenv/install-$1.sh" >&2
  (cd "$2" && find "$3" -type f -printf '%p %s\n' | LC_ALL=C sort)
}

binary_hash() {
  local bin="$TESTENV_DIR/bin/$1"
  if [ "$(cat "$TESTENV_DIR/bin/.$1.version" 2>/dev/null)" != "$2" ]; then
    bash "$repo/hack/testenv/build-go-tools.sh" "$1" >&2
  fi
  sha256sum < "$bin" | cut -d' ' -f1
}

# The broker plugin's sources (broker-plugin/), which the mosquitto image builds in a stage of its own.
plugin_sources() {
  (cd "$repo" && find broker-plugin -type f ! -name '*.so' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
}

# The files of an image's folder that reach the build; for the operator, what its Dockerfile copies.
source_files() {
  if [ "$1" = mqtt-operator ]; then
    (cd "$repo" && { echo Dockerfile; echo .dockerignore; echo pyproject.toml; echo setup.py; echo README.md
      # What .dockerignore leaves out of the context: caches, pip's egg-info of an editable install and
      # the C extension it builds in place.
      find operator -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*' ! -name '*.so'; } | LC_ALL=C sort)
  else
    (cd "$dir" && find . -type f ! -path '*/__pycache__/*' ! -name '*.pyc' | LC_ALL=C sort)
  fi
}

bases_of() { sed -n 's/^FROM[[:space:]]\+debian:\([a-z]*\)-slim.*/\1/p' "$dir/Dockerfile" | sort -u; }

inputs_of() {
  define "$1"
  local suite
  {
    echo "image $1 $ref"
    printf 'arg %s\n' "${args[@]}"
    echo "$extra"
    for suite in $(bases_of); do echo "base $suite $(base_inputs "$suite")"; done
    (cd "$dir" && source_files "$1" | tr '\n' '\0' | xargs -0 sha256sum)
  } | sha256sum | cut -d' ' -f1
}

# Copies an image's folder and what it packs (jars, binaries) to a staging context of its own.
stage_context() {
  local name="$1" c="$stage/$1"
  rm -rf "$c" && mkdir -p "$c"
  cp -a "$dir/." "$c/"
  case "$name" in
    kafka) cp -al "$TESTENV_DIR/kafka/$KAFKA_VERSION/libs" "$c/libs" 2>/dev/null \
      || cp -a "$TESTENV_DIR/kafka/$KAFKA_VERSION/libs" "$c/libs" ;;
    rocketmq) cp -al "$TESTENV_DIR/rocketmq/$ROCKETMQ_VERSION/lib" "$c/lib" 2>/dev/null \
      || cp -a "$TESTENV_DIR/rocketmq/$ROCKETMQ_VERSION/lib" "$c/lib" ;;
    mosquitto) mkdir "$c/broker-plugin" && cp -a "$repo/broker-plugin/Makefile" "$repo/broker-plugin/"*.[ch] "$c/broker-plugin/" ;;
    pause) gcc -Os -static -Wall -Werror -o "$c/pause" "$c/pause.c" && strip "$c/pause" ;;
    coredns|local-path-provisioner) cp "$TESTENV_DIR/bin/$name" "$c/$name" ;;
  esac
  ctx="$c"
}

build_image() {
  local name="$1" inputs="$2" began suite
  define "$name"
  for suite in $(bases_of); do build_base "$suite"; done
  began=$SECONDS
  [ -n "$ctx" ] || stage_context "$name"
  local flags=(--quiet --layers --force-rm --pull=never --network host --isolation "$ISOLATION" -f "$dir/Dockerfile" -t "$ref")
  local a
  for a in "${args[@]}"; do flags+=(--build-arg "$a"); done
  [ "$name" = mqtt-operator ] && flags+=(--secret "id=build-ca,src=$CA_BUNDLE")
  echo ">> $name: building $ref"
  local previous
  previous="$(bah inspect --type image --format '{{.FromImageID}}' "$ref" 2>/dev/null || true)"
  bah bud "${flags[@]}" "$ctx" >/dev/null
  local archive="$out/$name.tar" id
  rm -f "$archive.tmp"
  bah push --quiet "$ref" "oci-archive:$archive.tmp:$ref"
  mv "$archive.tmp" "$archive"
  id="$(bah inspect --type image --format '{{.FromImageID}}' "$ref")"
  # The image this one replaces under the same ref is of no use any more (its layers cached for
  # other steps stay).
  if [ -n "$previous" ] && [ "$previous" != "$id" ]; then bah rmi "$previous" >/dev/null 2>&1 || true; fi
  [ "$ctx" = "$stage/$name" ] && rm -rf "$ctx"
  record "$name" "$ref" "$archive" "$inputs" "$id"
  echo ">> $name: $ref built in $((SECONDS - began)) s, archive $(du -m "$archive" | cut -f1) MB"
}

record() {
  python3 - "$manifest" "$@" <<'PY'
import json, os, sys
path, name, ref, archive, inputs, image_id = sys.argv[1:]
try:
    with open(path) as f:
        images = json.load(f)
except FileNotFoundError:
    images = {}
images[name] = {"ref": ref, "archive": archive, "inputs": inputs, "id": image_id}
with open(path + ".tmp", "w") as f:
    json.dump(dict(sorted(images.items())), f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
PY
}

recorded_inputs() {  # name -> the inputs its archive was built from, or nothing
  [ -f "$manifest" ] || return 0
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], {}).get("inputs", ""))' \
    "$manifest" "$1"
}

# Working containers of this run are removed even when a step fails, so nothing stays mounted.
containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do bah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$stage"
}

main() {
  FORCE=
  local names=() name
  for name in "$@"; do
    case "$name" in
      --force) FORCE=1 ;;
      --list) printf '%s\n' "${ALL[@]}"; exit 0 ;;
      -*) usage ;;
      *) names+=("$name") ;;
    esac
  done
  [ ${#names[@]} -gt 0 ] || names=("${ALL[@]}")
  for name in "${names[@]}"; do define "$name"; done  # an unknown name fails before any work
  if [ "$(id -u)" -ne 0 ]; then
    echo "$0 needs root: buildah's storage under $store, its mounts and RUN steps (sudo make images)" >&2
    exit 1
  fi
  install_tools
  mkdir -p "$out" "$store"
  exec 9>"$out/.lock"
  flock 9
  trap cleanup EXIT
  local began=$SECONDS inputs built=0
  for name in "${names[@]}"; do
    inputs="$(inputs_of "$name")"
    if [ -z "$FORCE" ] && [ -f "$out/$name.tar" ] && [ "$(recorded_inputs "$name")" = "$inputs" ]; then
      echo ">> $name: up to date"
      continue
    fi
    build_image "$name" "$inputs"
    built=$((built + 1))
  done
  echo ">> $built image(s) built in $((SECONDS - began)) s; manifest $manifest"
}

main "$@"
