#!/usr/bin/env bash
# Runs a command against the test stack (state in .state/test, its own ports), starting the stack
# first when it is not running and, in that case, stopping and wiping it afterwards.
#   infra/with-test-stack.sh CMD [ARGS...]
# Keep a test stack between runs with `make test-up` (then `make test-down` when done).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DRIFTLINE_STATE_DIR="${DRIFTLINE_TEST_STATE_DIR:-$ROOT/.state/test}"
export DRIFTLINE_PORT_BASE="${DRIFTLINE_TEST_PORT_BASE:-39190}"
# The test stack's broker also has a SASL_SSL listener (tests/integration/test_secure_kafka.py).
export DRIFTLINE_KAFKA_SASL_SSL="${DRIFTLINE_KAFKA_SASL_SSL:-1}"
source "$ROOT/infra/lib.sh"

started=0
if ! "$ROOT/infra/stack.sh" status >/dev/null 2>&1; then
  started=1
  "$ROOT/infra/stack.sh" clean >/dev/null 2>&1 || true
  "$ROOT/infra/stack.sh" up
  "$ROOT/.venv/bin/driftline" stack init >/dev/null
fi
cleanup() {
  local rc=$?
  if [ "$started" = 1 ]; then
    if [ "$rc" != 0 ] && [ -d "$LOG_DIR" ]; then
      # Keep the logs of a failed run where CI can show them.
      mkdir -p "$ROOT/.state/test-logs" && cp -rL "$LOG_DIR/." "$ROOT/.state/test-logs/" 2>/dev/null || true
      # A component that died during the run: say which, with its log's tail, where CI shows it.
      if ! "$ROOT/infra/stack.sh" status >&2; then
        for log in "$LOG_DIR"/kafka.log "$LOG_DIR"/apicurio.log "$LOG_DIR"/minio.log; do
          [ -f "$log" ] && { echo "--- last lines of $log" >&2; tail -n 25 "$log" >&2; }
        done
      fi
    fi
    "$ROOT/infra/stack.sh" clean >/dev/null
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
"$@"
