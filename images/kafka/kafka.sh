#!/bin/sh
# The image's entrypoint: `kafka start` runs one KRaft node (broker + controller), formatting its storage
# on the first start; `kafka run CLASS ARGS...` runs a Kafka class (a tool) with the same classpath;
# anything else is run as a command.
#
# Environment (all optional):
#   KAFKA_ADVERTISED_LISTENERS  what clients are told, e.g. PLAINTEXT://kafka-0.kafka.kafka.svc:9092
#                               (default PLAINTEXT://<the Pod's FQDN>:KAFKA_PORT)
#   KAFKA_PORT                  the client listener's port, on every address (9092)
#   KAFKA_CONTROLLER_PORT       the controller's port, on loopback only (9093)
#   KAFKA_NODE_ID               (1)
#   KAFKA_CLUSTER_ID            the id storage is formatted with (default: a new random one)
#   KAFKA_DATA_DIR              the volume: data in data/, the generated server.properties (/var/lib/kafka)
#   KAFKA_HEAP_OPTS             (-Xms512m -Xmx512m)
#   KAFKA_CFG_<NAME>            any broker property, NAME in capitals with _ for . (last word wins):
#                               KAFKA_CFG_NUM_PARTITIONS=3 sets num.partitions=3
set -eu
libs=/opt/kafka/libs
data_dir="${KAFKA_DATA_DIR:-/var/lib/kafka}"
port="${KAFKA_PORT:-9092}"
controller_port="${KAFKA_CONTROLLER_PORT:-9093}"
node_id="${KAFKA_NODE_ID:-1}"

java_run() {
  # shellcheck disable=SC2086  # KAFKA_HEAP_OPTS holds several options
  exec java ${KAFKA_HEAP_OPTS:-} -XX:+UseG1GC -XX:+ExitOnOutOfMemoryError \
    -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties -cp "$libs/*" "$@"
}

write_properties() {
  advertised="${KAFKA_ADVERTISED_LISTENERS:-PLAINTEXT://$(hostname -f 2>/dev/null || hostname):$port}"
  {
    echo "process.roles=broker,controller"
    echo "node.id=$node_id"
    echo "controller.quorum.voters=$node_id@127.0.0.1:$controller_port"
    echo "listeners=PLAINTEXT://:$port,CONTROLLER://127.0.0.1:$controller_port"
    echo "advertised.listeners=$advertised"
    echo "controller.listener.names=CONTROLLER"
    echo "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    echo "inter.broker.listener.name=PLAINTEXT"
    echo "log.dirs=$data_dir/data"
    # One node: every internal topic has one replica.
    echo "num.partitions=1"
    echo "offsets.topic.replication.factor=1"
    echo "transaction.state.log.replication.factor=1"
    echo "transaction.state.log.min.isr=1"
    echo "group.initial.rebalance.delay.ms=0"
    echo "message.max.bytes=4194304"
    env | sed -n 's/^KAFKA_CFG_\([A-Z0-9_]*\)=\(.*\)$/\1=\2/p' | while IFS='=' read -r name value; do
      echo "$(echo "$name" | tr 'A-Z_' 'a-z.')=$value"
    done
  } > "$data_dir/server.properties"
}

case "${1:-start}" in
  start)
    write_properties
    if [ ! -f "$data_dir/data/meta.properties" ]; then
      cluster_id="${KAFKA_CLUSTER_ID:-$(java -cp "$libs/*" kafka.tools.StorageTool random-uuid)}"
      java -cp "$libs/*" -Dlog4j.configuration=file:/opt/kafka/config/log4j.properties \
        kafka.tools.StorageTool format --ignore-formatted -t "$cluster_id" -c "$data_dir/server.properties"
    fi
    java_run kafka.Kafka "$data_dir/server.properties"
    ;;
  run)
    shift
    java_run "$@"
    ;;
  *) exec "$@" ;;
esac
