#!/usr/bin/env bash
# Copies Apache RocketMQ 5 from Maven Central: the name server, the proxy (which embeds the broker in
# local mode) and the admin tools (MQAdminStartup), with their dependencies, into one lib/ folder.
# ROCKETMQ_VERSION=x.y.z in the environment installs another version beside the pinned one.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
wanted="${ROCKETMQ_VERSION:-}"
source "$here/versions.env"
ROCKETMQ_VERSION="${wanted:-$ROCKETMQ_VERSION}"
TESTENV_DIR="${TESTENV_DIR:-$here/../../.testenv}"
dest="$TESTENV_DIR/rocketmq/$ROCKETMQ_VERSION"
[ -f "$dest/.complete" ] && exit 0
rm -rf "$dest/lib"
mkdir -p "$dest/lib"
mvn -q -B -f "$here/rocketmq-pom.xml" -Drocketmq.version="$ROCKETMQ_VERSION" \
  dependency:copy-dependencies -DoutputDirectory="$dest/lib" -DincludeScope=runtime
touch "$dest/.complete"
