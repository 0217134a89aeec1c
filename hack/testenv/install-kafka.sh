#!/usr/bin/env bash
# Copies Apache Kafka (KRaft-capable broker and its tools) and a logging backend from Maven Central.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/versions.env"
TESTENV_DIR="${TESTENV_DIR:-$here/../../.testenv}"
dest="$TESTENV_DIR/kafka/$KAFKA_VERSION"
[ -f "$dest/.complete" ] && exit 0
mkdir -p "$dest/libs"
mvn -q -B -f "$here/kafka-pom.xml" -Dkafka.version="$KAFKA_VERSION" \
  dependency:copy-dependencies -DoutputDirectory="$dest/libs" -DincludeScope=runtime
touch "$dest/.complete"
