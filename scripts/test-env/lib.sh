# shellcheck shell=bash
# Shared helpers for scripts/test-env/{up,down,smoke}. Sourced, not executed.
# All progress goes to stderr so that `up`'s stdout carries only the env lines.

TE_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# ---- configuration (every value can be overridden from the environment) ----
TE_CACHE=${ORDERFLOW_CACHE:-$HOME/.cache/orderflow}
TE_RUN_DIR=${ORDERFLOW_TEST_RUN_DIR:-/tmp/orderflow-test-env}

TE_KAFKA_VERSION=${ORDERFLOW_KAFKA_VERSION:-3.9.2}          # newest 3.9.x on Maven Central when written
TE_CASSANDRA_VERSION=${ORDERFLOW_CASSANDRA_VERSION:-5.0.9}  # newest 5.0.x on Maven Central when written
TE_SLF4J_VERSION=1.7.36      # slf4j-api version that kafka 3.9 is built against
TE_RELOAD4J_VERSION=1.2.27
TE_DEP_PLUGIN_VERSION=3.8.1  # org.apache.maven.plugins:maven-dependency-plugin, pinned for reproducibility

TE_KAFKA_PORT=${ORDERFLOW_TEST_KAFKA_PORT:-19092}
TE_KAFKA_CONTROLLER_PORT=${ORDERFLOW_TEST_KAFKA_CONTROLLER_PORT:-19093}
TE_KAFKA_TLS_PORT=${ORDERFLOW_TEST_KAFKA_TLS_PORT:-0}   # the SASL_SSL listener; 0 = a free port
TE_CQL_PORT=${ORDERFLOW_TEST_CQL_PORT:-19042}
TE_STORAGE_PORT=${ORDERFLOW_TEST_CASSANDRA_STORAGE_PORT:-17000}
TE_TIMEOUT=${ORDERFLOW_TEST_ENV_TIMEOUT:-180}
TE_GRACE=${ORDERFLOW_TEST_ENV_GRACE:-20}

TE_KAFKA_HEAP=${ORDERFLOW_TEST_KAFKA_HEAP:-"-Xms256m -Xmx512m"}
TE_CASSANDRA_HEAP=${ORDERFLOW_TEST_CASSANDRA_HEAP:-"-Xms512m -Xmx1g"}

TE_KAFKA_HOME=$TE_CACHE/kafka-$TE_KAFKA_VERSION
TE_CASSANDRA_HOME=$TE_CACHE/cassandra-$TE_CASSANDRA_VERSION
TE_M2=$TE_CACHE/m2
TE_MARKER_NAME=.orderflow-test-env   # marks a run dir as ours (so wiping it is safe)

# ---- small utilities ----
te_log() { printf '[test-env] %s\n' "$*" >&2; }
te_die() { printf '[test-env] ERROR: %s\n' "$*" >&2; exit 1; }

te_now() { # seconds with fraction
  if [[ -n ${EPOCHREALTIME:-} ]]; then printf '%s' "${EPOCHREALTIME/,/.}"; else date +%s.%N; fi
}
te_elapsed() { # te_elapsed START -> "12.3"
  awk -v a="$1" -v b="$(te_now)" 'BEGIN { printf "%.1f", b - a }'
}

# te_password: a fresh random password (32 hex digits) for a test server's user.
te_password() {
  od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
}

# te_port_open HOST PORT: true if something accepts TCP connections there.
te_port_open() {
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# te_free_port: a port on 127.0.0.1 that nothing listens on right now, below the kernel's ephemeral range
# (the source ports of outgoing connections), so that a server restarted on it (scripts/test-env/restart)
# never finds it taken by some client's connection.
te_free_port() {
  local p i low=10000 high=32767 range
  range=$(cat /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true)
  if [[ $range =~ ^([0-9]+)[[:space:]]+[0-9]+$ ]] && (( BASH_REMATCH[1] > low + 1000 )); then high=$(( BASH_REMATCH[1] - 1 )); fi
  for i in $(seq 1 200); do
    p=$(( low + (RANDOM * 32768 + RANDOM) % (high - low) ))
    if ! te_port_open 127.0.0.1 "$p"; then printf '%s' "$p"; return 0; fi
  done
  te_die "could not find a free port"
}

# te_resolve_port NAME VALUE: VALUE, or a free port if VALUE is 0; dies if it is taken.
te_resolve_port() {
  local name=$1 value=$2
  [[ $value =~ ^[0-9]+$ ]] || te_die "$name must be a port number (or 0 for a free port), got '$value'"
  if [[ $value == 0 ]]; then te_free_port; return 0; fi
  if te_port_open 127.0.0.1 "$value"; then
    te_die "port $value ($name) on 127.0.0.1 is already in use; set $name=<port> or $name=0 for a free one"
  fi
  printf '%s' "$value"
}

# te_tail FILE [N]: print the last lines of a log to stderr.
te_tail() {
  local f=$1 n=${2:-60}
  if [[ -f $f ]]; then
    printf '[test-env] ---- last %s lines of %s ----\n' "$n" "$f" >&2
    tail -n "$n" "$f" >&2 || true
    printf '[test-env] ---- end of %s ----\n' "$f" >&2
  else
    printf '[test-env] (no log at %s)\n' "$f" >&2
  fi
}

# te_java_major BIN: major version of a java binary (e.g. 17), empty if it does not run.
te_java_major() {
  local v
  v=$("$1" -XshowSettings:properties -version 2>&1 | awk -F'= ' '/java.specification.version/ {print $2; exit}') || true
  printf '%s' "${v#1.}"
}

# te_find_java: sets TE_JAVA to a JDK 11 or 17 (Cassandra 5.0 runs on those only; Kafka 3.9 on both).
te_find_java() {
  local c m
  local -a candidates=()
  [[ -n ${ORDERFLOW_JAVA:-} ]] && candidates+=("$ORDERFLOW_JAVA")
  [[ -n ${JAVA_HOME:-} ]] && candidates+=("$JAVA_HOME/bin/java")
  command -v java >/dev/null 2>&1 && candidates+=("$(command -v java)")
  for c in /usr/lib/jvm/*17*/bin/java /usr/lib/jvm/*11*/bin/java; do [[ -x $c ]] && candidates+=("$c"); done
  for c in "${candidates[@]}"; do
    [[ -x $c ]] || continue
    m=$(te_java_major "$c")
    if [[ $m == 17 || $m == 11 ]]; then TE_JAVA=$c; TE_JAVA_MAJOR=$m; return 0; fi
  done
  te_die "need a JDK 17 (or 11) for Cassandra 5.0 / Kafka 3.9; tried: ${candidates[*]:-nothing}. Set ORDERFLOW_JAVA=/path/to/java"
}

# te_is_ours PID WHAT: true if PID is alive and is the WHAT server started for this run dir.
te_is_ours() {
  local pid=$1 what=$2 cmd
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ $cmd == *"-Dorderflow.testenv=$what"* && $cmd == *"-Dorderflow.testenv.rundir=$TE_RUN_DIR "* ]]
}

# te_launch PIDFILE LOGFILE CMD...: start CMD detached (own session, stdin from /dev/null,
# stdout+stderr to LOGFILE, every other inherited fd closed) and write its pid to PIDFILE.
te_launch() {
  local pidfile=$1 logfile=$2; shift 2
  rm -f "$pidfile"
  setsid bash -c '
    pidfile=$1; shift
    for fd in /proc/$$/fd/*; do
      fd=${fd##*/}
      if [[ $fd =~ ^[0-9]+$ ]] && (( fd > 2 )); then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    echo $$ >"$pidfile"
    exec "$@"' _ "$pidfile" "$@" </dev/null >"$logfile" 2>&1 &
  local i
  for i in $(seq 1 100); do [[ -s $pidfile ]] && return 0; sleep 0.05; done
  te_die "could not start: $*"
}
