#!/bin/sh
# The image's entrypoint: `rocketmq namesrv` (the name server), `rocketmq proxy` (the proxy in local mode,
# which runs the broker in the same JVM), `rocketmq admin SUBCOMMAND ...` (mqadmin); anything else is
# run as a command. The broker settings are those of the test environment's RocketMQ (testenv/rocketmq.py).
#
# Environment (all optional):
#   ROCKETMQ_HOME               state: store/, logs/rocketmqlogs/, the generated configs (/var/lib/rocketmq)
#   ROCKETMQ_HEAP               the JVM's heap (namesrv 128m, proxy 384m, admin 128m)
#   ROCKETMQ_NAMESRV_PORT       the name server's port (9876)
#   ROCKETMQ_NAMESRV_ADDR       where the proxy and broker find the name server (127.0.0.1:9876)
#   ROCKETMQ_CLUSTER            the cluster's name (DefaultCluster)
#   ROCKETMQ_BROKER_NAME        (broker-a)
#   ROCKETMQ_BROKER_IP          the address the broker registers (default: RocketMQ picks the Pod's IP)
#   ROCKETMQ_BROKER_PORT        (10911; the broker listens on this port - 2 as well)
#   ROCKETMQ_GRPC_PORT          the proxy's gRPC port, what clients use (8081)
#   ROCKETMQ_REMOTING_PORT      the proxy's remoting port (8080)
#   ROCKETMQ_AUTO_CREATE_TOPICS (false)
#   ROCKETMQ_BROKER_EXTRA       more broker.conf lines, appended (so they win)
#   ROCKETMQ_BROKER_CONF, ROCKETMQ_PROXY_CONF   paths of whole files to use instead of the generated ones
set -eu
home="${ROCKETMQ_HOME:-/var/lib/rocketmq}"
export ROCKETMQ_HOME="$home" RMQ_PROXY_HOME="$home"
namesrv_addr="${ROCKETMQ_NAMESRV_ADDR:-127.0.0.1:9876}"
cluster="${ROCKETMQ_CLUSTER:-DefaultCluster}"

java_run() {  # heap main args...
  heap="${ROCKETMQ_HEAP:-$1}"
  shift
  # Java 17 closes the JDK internals RocketMQ reaches into (unmapping files, netty's direct buffers).
  exec java "-Xms$heap" "-Xmx$heap" -XX:+UseG1GC -XX:-OmitStackTraceInFastThrow -XX:+ExitOnOutOfMemoryError \
    --add-opens=java.base/java.lang=ALL-UNNAMED --add-opens=java.base/java.util=ALL-UNNAMED \
    --add-opens=java.base/java.nio=ALL-UNNAMED --add-opens=java.base/sun.nio.ch=ALL-UNNAMED \
    --add-opens=java.base/jdk.internal.misc=ALL-UNNAMED --add-opens=java.base/jdk.internal.ref=ALL-UNNAMED \
    --add-exports=java.base/jdk.internal.ref=ALL-UNNAMED -Dio.netty.tryReflectionSetAccessible=true \
    "-Duser.home=$home" "-Drocketmq.home.dir=$home" -cp "/opt/rocketmq/lib/*" "$@"
}

broker_conf() {
  broker_port="${ROCKETMQ_BROKER_PORT:-10911}"
  echo "brokerClusterName=$cluster"
  echo "brokerName=${ROCKETMQ_BROKER_NAME:-broker-a}"
  echo "brokerId=0"
  echo "brokerRole=ASYNC_MASTER"
  echo "flushDiskType=ASYNC_FLUSH"
  echo "namesrvAddr=$namesrv_addr"
  if [ -n "${ROCKETMQ_BROKER_IP:-}" ]; then
    echo "brokerIP1=$ROCKETMQ_BROKER_IP"
    echo "brokerIP2=$ROCKETMQ_BROKER_IP"
  fi
  echo "listenPort=$broker_port"
  echo "haListenPort=$((broker_port + 1))"
  echo "storePathRootDir=$home/store"
  echo "storePathCommitLog=$home/store/commitlog"
  # 64 MB commit-log files instead of 1 GB: a small node's disk.
  echo "mappedFileSizeCommitLog=67108864"
  echo "autoCreateTopicEnable=${ROCKETMQ_AUTO_CREATE_TOPICS:-false}"
  echo "autoCreateSubscriptionGroup=true"
  echo "enablePropertyFilter=true"
  echo "waitTimeMillsInSendQueue=2000"
  echo "diskSpaceWarningLevelRatio=95"
  # Pop consumers (the workers' receives): checkpoints kept and acks matched in memory
  # (docs/resources/replicationtask.md, "Running RocketMQ for it").
  echo "enablePopBufferMerge=true"
  echo "enablePopBatchAck=true"
  if [ -n "${ROCKETMQ_BROKER_EXTRA:-}" ]; then printf '%s\n' "$ROCKETMQ_BROKER_EXTRA"; fi
}

proxy_conf() {
  # The proxy caches routes, topics and groups (a missing one too) for 20 s by default: a topic made
  # just after a client asked for it would stay unknown that long.
  cat <<JSON
{
  "rocketMQClusterName": "$cluster",
  "namesrvAddr": "$namesrv_addr",
  "proxyMode": "local",
  "grpcServerPort": ${ROCKETMQ_GRPC_PORT:-8081},
  "remotingListenPort": ${ROCKETMQ_REMOTING_PORT:-8080},
  "topicRouteServiceCacheRefreshSeconds": 1,
  "topicConfigCacheRefreshSeconds": 1,
  "subscriptionGroupConfigCacheRefreshSeconds": 1,
  "grpcShutdownTimeSeconds": 1
}
JSON
}

mkdir -p "$home"
cd "$home"
case "${1:-namesrv}" in
  namesrv)
    printf 'listenPort=%s\nkvConfigPath=%s\n' "${ROCKETMQ_NAMESRV_PORT:-9876}" "$home/namesrv/kvConfig.json" \
      > "$home/namesrv.properties"
    java_run 128m org.apache.rocketmq.namesrv.NamesrvStartup -c "$home/namesrv.properties"
    ;;
  proxy)
    bc="${ROCKETMQ_BROKER_CONF:-$home/broker.conf}"
    pc="${ROCKETMQ_PROXY_CONF:-$home/rmq-proxy.json}"
    [ -n "${ROCKETMQ_BROKER_CONF:-}" ] || broker_conf > "$bc"
    [ -n "${ROCKETMQ_PROXY_CONF:-}" ] || proxy_conf > "$pc"
    java_run 384m org.apache.rocketmq.proxy.ProxyStartup -pm local -bc "$bc" -pc "$pc" -n "$namesrv_addr"
    ;;
  admin)
    shift
    java_run 128m -XX:TieredStopAtLevel=1 org.apache.rocketmq.tools.command.MQAdminStartup "$@"
    ;;
  *) exec "$@" ;;
esac
