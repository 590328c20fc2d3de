#!/usr/bin/env bash
# Runs the peers benchmark. With KAFKA_BOOTSTRAP set, it uses that broker;
# otherwise it starts a single-node Apache Kafka broker (KRaft) on free
# loopback ports, runs the benchmark against it and stops it afterwards.
#
#   ./run.sh                      # all phases: produce, read, group, rebalance
#   ./run.sh --rounds 3 --keyed   # any option of the peers binary
#   ./run.sh --phases group,rebalance --rebalance-trials 5
#
# The franz-go client is a Go program (franz/), built here with `go build`
# next to the peers binary; without Go on PATH (or /usr/local/go/bin) it is
# skipped at build time and reports an error if asked for.
#
# The rebalance phase and the `java` client also run Kafka's Java tools
# (VerifiableConsumer, ProducerPerformance, ConsumerPerformance); they come from
# the repository fixture's jar cache ($KASTELLAN_CACHE_DIR, else
# ~/.cache/kastellan), fetched with mvn on first use, and needs java on PATH
# (or JAVA_HOME) even when KAFKA_BOOTSTRAP points at a running broker.
#
# Environment:
#   KAFKA_BOOTSTRAP       use this broker instead of starting one
#   PEERS_KAFKA_VERSION   Apache Kafka version to fetch (default 4.3.1)
#   PEERS_KAFKA_CACHE     where the broker's jars are kept
#                         (default ~/.cache/kastellan-peers/kafka-<version>)
#   PEERS_KEEP_BROKER_DIR keep the broker's data and log directory when set
#   CARGO_TARGET_DIR      where cargo builds (default benches/peers/target); the
#                         franz-go program goes to its release/ directory too
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
kafka_version="${PEERS_KAFKA_VERSION:-4.3.1}"
log4j_version="2.24.3"
slf4j_version="2.0.17"
cache="${PEERS_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kastellan-peers/kafka-$kafka_version}"
broker_pid=""
broker_dir=""

die() {
    echo "run.sh: $*" >&2
    exit 1
}

fetch_jars() {
    if [ -f "$cache/libs/kafka_2.13-$kafka_version.jar" ]; then
        return
    fi
    command -v mvn >/dev/null || die "mvn is needed to fetch the Kafka jars (apt-get install -y maven)"
    mkdir -p "$cache/pom"
    cat >"$cache/pom/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.peers</groupId>
  <artifactId>peers-kafka-broker</artifactId>
  <version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$kafka_version</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$kafka_version</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$log4j_version</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$log4j_version</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$slf4j_version</version></dependency>
  </dependencies>
</project>
EOF
    echo "run.sh: fetching Apache Kafka $kafka_version jars into $cache/libs" >&2
    rm -rf "$cache/libs.partial"
    mvn -q -f "$cache/pom/pom.xml" dependency:copy-dependencies \
        -DoutputDirectory="$cache/libs.partial" >&2
    mv "$cache/libs.partial" "$cache/libs"
}

port_is_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 30000))
        if port_is_free "$port"; then
            echo "$port"
            return
        fi
    done
    die "no free loopback port found"
}

stop_broker() {
    if [ -n "$broker_pid" ] && kill -0 "$broker_pid" 2>/dev/null; then
        kill "$broker_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do
            kill -0 "$broker_pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    if [ -n "$broker_dir" ] && [ -z "${PEERS_KEEP_BROKER_DIR:-}" ]; then
        rm -rf "$broker_dir"
    fi
}

start_broker() {
    command -v java >/dev/null || die "java 17+ is needed to run the broker (apt-get install -y openjdk-17-jre-headless)"
    fetch_jars
    local port controller_port classpath cluster_id
    port="$(free_port)"
    controller_port="$(free_port)"
    while [ "$controller_port" = "$port" ]; do controller_port="$(free_port)"; done
    broker_dir="$(mktemp -d "${TMPDIR:-/tmp}/peers-broker.XXXXXX")"
    classpath="$cache/libs/*"

    cat >"$broker_dir/server.properties" <<EOF
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.quorum.bootstrap.servers=127.0.0.1:$controller_port
inter.broker.listener.name=PLAINTEXT
log.dirs=$broker_dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
group.initial.rebalance.delay.ms=0
EOF
    cat >"$broker_dir/log4j2.properties" <<EOF
status = error
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.console.ref = console
logger.kafka.name = kafka
logger.kafka.level = info
EOF

    cluster_id="$(java -cp "$classpath" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
    java -cp "$classpath" -Dlog4j2.configurationFile="$broker_dir/log4j2.properties" \
        kafka.tools.StorageTool format -t "$cluster_id" \
        -c "$broker_dir/server.properties" --standalone >"$broker_dir/format.log" 2>&1 ||
        { cat "$broker_dir/format.log" >&2; die "formatting the broker's storage failed"; }

    java -Xms256m -Xmx1g -cp "$classpath" \
        -Dlog4j2.configurationFile="$broker_dir/log4j2.properties" \
        kafka.Kafka "$broker_dir/server.properties" >"$broker_dir/broker.log" 2>&1 &
    broker_pid=$!

    local deadline=$((SECONDS + 90))
    until ! port_is_free "$port"; do
        if ! kill -0 "$broker_pid" 2>/dev/null; then
            tail -n 40 "$broker_dir/broker.log" >&2
            die "the broker exited during start-up"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 40 "$broker_dir/broker.log" >&2
            die "the broker did not open 127.0.0.1:$port within 90 s"
        fi
        sleep 0.5
    done
    export KAFKA_BOOTSTRAP="127.0.0.1:$port"
    echo "run.sh: Apache Kafka $kafka_version on $KAFKA_BOOTSTRAP (data and log in $broker_dir)" >&2
}

trap stop_broker EXIT
trap 'exit 130' INT TERM

if [ -z "${KAFKA_BOOTSTRAP:-}" ]; then
    start_broker
fi

cd "$here"
target_dir="${CARGO_TARGET_DIR:-$here/target}"
cargo build --release
go_program="$(command -v go || true)"
if [ -z "$go_program" ] && [ -x /usr/local/go/bin/go ]; then
    go_program=/usr/local/go/bin/go
fi
if [ -n "$go_program" ]; then
    # No VCS stamp: the program is built from a subdirectory of a worktree,
    # and the stamp would tell nothing the benchmark uses.
    (cd "$here/franz" && "$go_program" build -buildvcs=false -o "$target_dir/release/peers-franz" .) ||
        echo "run.sh: building the franz-go program failed; the franz-go client will report an error" >&2
else
    echo "run.sh: no go toolchain found; the franz-go client will not run" >&2
fi
"$target_dir/release/peers" "$@"
