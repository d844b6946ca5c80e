#!/usr/bin/env bash
# The six services of Driftline as one process set, run by honcho against the local stack.
#   infra/services.sh start     start them in the background (logs: <state dir>/logs/services.log)
#                               and wait until every one answers /readyz
#   infra/services.sh stop      SIGTERM to honcho, which stops every service cleanly
#   infra/services.sh status    one line per service (its /readyz answer)
#   infra/services.sh logs      follow the collected logs
# DRIFTLINE_SERVICES_ENV names an extra env file layered over the stack's (e.g. an isolated demo run).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/infra/lib.sh"

SERVICES=(ingestion features training registry deployment monitoring)
declare -A DEFAULT_PORT=([ingestion]=38101 [features]=38102 [training]=38103 [registry]=38104 [deployment]=38105 [monitoring]=38106)

port_of() { # service → port (DRIFTLINE_<SVC>_PORT overrides the default)
  local var="DRIFTLINE_${1^^}_PORT"
  echo "${!var:-${DEFAULT_PORT[$1]}}"
}

ready() { curl -fsS -m 3 -o /dev/null "http://127.0.0.1:$(port_of "$1")/readyz" 2>/dev/null; }

is_up() { # honcho runs for this state dir (its cmdline names our env file)
  is_running services
}

cmd_start() {
  [ -f "$STATE_DIR/stack.env" ] || die "no stack env in $STATE_DIR: run 'make up' first"
  if ! is_up; then
    local s
    for s in "${SERVICES[@]}"; do
      port_free "$(port_of "$s")" || die "port $(port_of "$s") for $s is taken (set DRIFTLINE_${s^^}_PORT)"
    done
    : >"$LOG_DIR/services.log"
    local envs="$STATE_DIR/stack.env"
    [ -n "${DRIFTLINE_SERVICES_ENV:-}" ] && envs="$envs,$DRIFTLINE_SERVICES_ENV"
    ( cd "$ROOT" && start_daemon services "$ROOT/.venv/bin/honcho" --no-colour -f "$ROOT/Procfile" \
        -e "$envs" start )
  fi
  local deadline=$((SECONDS + ${DRIFTLINE_SERVICES_TIMEOUT:-180})) pending
  while :; do
    pending=()
    for s in "${SERVICES[@]}"; do ready "$s" || pending+=("$s"); done
    [ ${#pending[@]} = 0 ] && break
    if ! is_up; then tail -n 40 "$LOG_DIR/services.log" >&2; die "the services exited during start-up (log above)"; fi
    [ $SECONDS -lt $deadline ] || { tail -n 40 "$LOG_DIR/services.log" >&2; die "not ready in time: ${pending[*]}"; }
    sleep 1
  done
  log "services ready: ${SERVICES[*]} — logs in $LOG_DIR/services.log"
}

cmd_stop() { stop_daemon services; }

cmd_status() {
  local s rc=0
  for s in "${SERVICES[@]}"; do
    if ready "$s"; then printf '%-11s ready on http://127.0.0.1:%s\n' "$s" "$(port_of "$s")"
    else printf '%-11s not ready (http://127.0.0.1:%s)\n' "$s" "$(port_of "$s")"; rc=1; fi
  done
  return $rc
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  logs) exec tail -F "$LOG_DIR/services.log" ;;
  *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
