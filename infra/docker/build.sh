#!/usr/bin/env bash
# Builds every Driftline image from infra/docker/Dockerfile (one target per service, plus the CLI).
#   infra/docker/build.sh TAG [REPOSITORY_PREFIX]     e.g. infra/docker/build.sh 0.1.0 registry.example.com/driftline
# Images are named <prefix>/<target>:<tag> (prefix default: driftline). Extra docker build
# arguments can be passed in DOCKER_BUILD_ARGS (e.g. "--push --platform linux/amd64" with buildx).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TAG="${1:?usage: infra/docker/build.sh TAG [REPOSITORY_PREFIX]}"
PREFIX="${2:-driftline}"
[ "$TAG" != latest ] || { echo "refusing the tag 'latest': give a version" >&2; exit 2; }
command -v docker >/dev/null || { echo "docker (with BuildKit) is required" >&2; exit 1; }

targets=(cli)
for pyproject in "$ROOT"/services/*/pyproject.toml; do
  targets+=("$(basename "$(dirname "$pyproject")")")
done
cd "$ROOT"
# The commit the images are built from, recorded by every training run as its code version
# ("-dirty" when tracked files differ from it); outside a checkout none is passed: "unknown".
code_version_args=()
if commit="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null)"; then
  [ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no)" ] || commit="$commit-dirty"
  code_version_args=(--build-arg "DRIFTLINE_CODE_VERSION=$commit")
fi
for target in "${targets[@]}"; do
  echo "building $PREFIX/$target:$TAG"
  # shellcheck disable=SC2086 # DOCKER_BUILD_ARGS is a list of words on purpose
  DOCKER_BUILDKIT=1 docker build -f infra/docker/Dockerfile --target "$target" -t "$PREFIX/$target:$TAG" \
    "${code_version_args[@]}" ${DOCKER_BUILD_ARGS:-} .
done
