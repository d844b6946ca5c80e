#!/usr/bin/env bash
# Creates or updates the project's virtualenv (.venv) from uv.lock with a cached, pinned uv.
#   infra/venv.sh            sync the venv (fast when nothing changed)
#   infra/venv.sh --uv       print the path of the pinned uv binary
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/infra/lib.sh"

UV_VERSION=0.13.8
UV_HOME="$CACHE_DIR/uv-$UV_VERSION"
UV="$UV_HOME/bin/uv"
export UV_CACHE_DIR="$CACHE_DIR/uv-cache"
export UV_PYTHON_DOWNLOADS=never
export UV_LINK_MODE=copy

if [ ! -x "$UV" ]; then
  command -v python3 >/dev/null || die "python3 (3.11) is required"
  log "installing uv $UV_VERSION into $UV_HOME (first run only)"
  python3 -m venv "$UV_HOME"
  "$UV_HOME/bin/pip" install -q "uv==$UV_VERSION"
fi
[ "${1:-}" = --uv ] && { echo "$UV"; exit 0; }

cd "$ROOT"
# requirements.lock is the committed lock (exported from uv's resolution by `make lock`; it pins
# every package with hashes and, unlike uv.lock, names no package index). Re-sync only when it or
# a pyproject changed.
stamp=".venv/.driftline-sync"
want=$(cat requirements.lock pyproject.toml libs/*/pyproject.toml services/*/pyproject.toml | sha256sum | cut -c1-16)
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
py=$(command -v python3.11 || command -v python3)
[ -x .venv/bin/python ] || "$UV" venv --quiet --python "$py" .venv
log "syncing .venv with requirements.lock"
"$UV" pip sync --quiet --python .venv/bin/python requirements.lock
editables=()
for d in libs/* services/*; do [ -f "$d/pyproject.toml" ] && editables+=(-e "$d"); done
"$UV" pip install --quiet --python .venv/bin/python --no-deps "${editables[@]}"
echo "$want" >"$stamp"
