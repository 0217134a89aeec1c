#!/usr/bin/env bash
# Installs from Debian's packages: Mosquitto (broker, clients, dynamic-security plugin, the headers
# and compiler for our broker plugin) and kcat for the tests; containerd, runc, the CNI plugins,
# iptables and the util-linux/iproute2 tools for the node
# (localnode/).
set -euo pipefail
need=()
command -v mosquitto >/dev/null || need+=(mosquitto)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v mosquitto_ctrl >/dev/null || need+=(mosquitto-clients)
# The headers and compiler the broker plugin (broker-plugin/) is built with (build-broker-plugin.sh).
[ -e /usr/include/mosquitto_broker.h ] || need+=(mosquitto-dev)
[ -e /usr/include/mosquitto.h ] || need+=(libmosquitto-dev)
[ -e /usr/include/cjson/cJSON.h ] || need+=(libcjson-dev)
command -v cc >/dev/null || need+=(gcc)
command -v make >/dev/null || need+=(make)
command -v nm >/dev/null || need+=(binutils)
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
command -v kcat >/dev/null || need+=(kcat)
command -v openssl >/dev/null || need+=(openssl)
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v nsenter >/dev/null || need+=(util-linux)
command -v ip >/dev/null || need+=(iproute2)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The Debian package starts a system broker on :1883; tests run their own on free ports.
if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
  $SUDO systemctl stop mosquitto || true
fi
