# Shared helpers of the infra scripts (sourced, not run).
# shellcheck shell=bash

STATE_DIR="${DRIFTLINE_STATE_DIR:-$ROOT/.state/dev}"
case "$STATE_DIR" in /*) ;; *) STATE_DIR="$ROOT/$STATE_DIR" ;; esac
CACHE_DIR="${DRIFTLINE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/driftline}"
PORTS_FILE="$STATE_DIR/ports.env"
LOG_DIR="$STATE_DIR/logs"
RUN_DIR="$STATE_DIR/run"

log() { printf 'driftline-stack: %s\n' "$*"; }
warn() { printf 'driftline-stack: WARNING: %s\n' "$*" >&2; }
die() { printf 'driftline-stack: ERROR: %s\n' "$*" >&2; exit 1; }

port_free() { # true when nothing listens on 127.0.0.1:$1 and we may bind it
  # SO_REUSEADDR, as the servers set it: connections of a stopped server still in TIME_WAIT do
  # not make the port taken; a live listener still does.
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http_ok() { curl -fsS -o /dev/null -m 3 "$1" 2>/dev/null; }

wait_until() { # name timeout-seconds command args...
  local name=$1 timeout=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    if ! is_running "$name"; then
      warn "$name exited during start-up; last lines of $LOG_DIR/$name.log:"
      tail -n 30 "$LOG_DIR/$name.log" >&2 || true
      die "$name did not start"
    fi
    [ $SECONDS -lt $deadline ] || { tail -n 30 "$LOG_DIR/$name.log" >&2 || true; die "$name did not answer within ${timeout}s"; }
    sleep 0.3
  done
}

is_running() { # name: pid file names a live process started for this state dir
  local pidf="$RUN_DIR/$1.pid" pid
  [ -f "$pidf" ] || return 1
  pid=$(cat "$pidf")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STATE_DIR"
}

start_daemon() { # name command args... — detached from this shell, output to $LOG_DIR/name.log
  local name=$1; shift
  mkdir -p "$LOG_DIR" "$RUN_DIR"
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN_DIR/$name.pid"
  log "$name: started (pid $!)"
}

stop_daemon() { # name — TERM, wait up to 40 s, then KILL
  local name=$1 pidf="$RUN_DIR/$1.pid" pid i
  if ! is_running "$name"; then rm -f "$pidf"; return 0; fi
  pid=$(cat "$pidf")
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 400); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then warn "$name did not stop in 40 s; killing it"; kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$pidf"
  log "$name: stopped"
}
