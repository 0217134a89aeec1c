#!/usr/bin/env bash
# What `make venv` needs to build the package's C extension (the bridge's PUBLISH reader,
# operator/mqtt_operator/bridge/_publish.c): a C compiler and the headers of the Python the venv is
# made from. Installs them from Debian's packages when missing. Usage: install-build-tools.sh PYTHON
set -euo pipefail
python="${1:-python3}"
need=()
command -v cc >/dev/null || need+=(gcc)
[ -e /usr/include/stdio.h ] || need+=(libc6-dev)
include="$("$python" -c 'import sysconfig; print(sysconfig.get_path("include"))')"
if [ ! -e "$include/Python.h" ]; then
  # Debian keeps a Python's headers in pythonX.Y-dev (a Python built by hand has them already).
  need+=("python$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-dev")
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
