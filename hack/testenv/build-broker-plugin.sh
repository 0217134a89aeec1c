#!/usr/bin/env bash
# Builds the broker plugin (broker-plugin/) against the host's Mosquitto headers into
# $TESTENV_DIR/broker-plugin/<inputs>/mqtt_operator_stamp.so and prints that path. <inputs> is a hash of
# the sources, the Makefile and the installed header package's version, so a changed source gets a
# folder of its own (worktrees sharing one .testenv do not overwrite each other's build) and an
# unchanged one is not rebuilt. The headers come from hack/testenv/install-debian.sh.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
TESTENV_DIR="${TESTENV_DIR:-$repo/.testenv}"
src="$repo/broker-plugin"
if [ ! -e /usr/include/mosquitto_broker.h ] || [ ! -e /usr/include/cjson/cJSON.h ] || ! command -v make >/dev/null || ! command -v cc >/dev/null \
  || ! command -v nm >/dev/null; then
  bash "$here/install-debian.sh" >&2
fi
headers="$(dpkg-query -W -f '${Version}' mosquitto-dev 2>/dev/null || echo unknown)"
inputs="$({ echo "mosquitto-dev $headers"; cc --version | head -n1; cat "$src/Makefile" "$src"/*.h "$src"/*.c; } \
  | sha256sum | cut -c1-16)"
out="$TESTENV_DIR/broker-plugin/$inputs"
so="$out/mqtt_operator_stamp.so"
if [ ! -f "$so" ]; then
  mkdir -p "$out"
  # Built beside, then renamed: a concurrent run never loads a half-written file.
  # `check`: the host's broker exports every mosquitto_* function the plugin calls.
  make -s -C "$src" check OUT="$so.tmp.$$" BROKER="$(command -v mosquitto)" >&2
  mv "$so.tmp.$$" "$so"
  # The broker drops to the `mosquitto` user, which must read the plugin.
  chmod 0755 "$out" "$so"
  chmod 0755 "$TESTENV_DIR/broker-plugin"
fi
echo "$so"
