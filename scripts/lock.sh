#!/usr/bin/env bash
# Refresh the lock files in requirements/ from pyproject.toml. Run it after adding or changing a
# dependency, and commit pyproject.toml together with requirements/*.lock.
#
#   scripts/lock.sh                          keep every existing pin that still fits; pin what is new
#   scripts/lock.sh --upgrade                move every pin to the newest release pyproject allows
#   scripts/lock.sh --upgrade-package NAME   move one package (repeatable)
#
# requirements/dev.lock    train + serve + dev + docs extras: .ci/run and the README commands (pip -c)
# requirements/serve.lock  serve extra: the serving image (docker/Dockerfile)
# requirements/train.lock  train extra: the training image (docker/Dockerfile.train)
#
# The locks are universal (one file for Linux, macOS and Windows; environment markers pick the
# lines) and resolved for Python >= 3.11 against PyPI. serve.lock and train.lock are resolved
# within dev.lock, so a package has one version in all three. Needs uv (in the dev extra).
set -euo pipefail
cd "$(dirname "$0")/.."

UV=${UV:-uv}
if ! command -v "$UV" >/dev/null; then
    echo "scripts/lock.sh: uv not found; install it with: pip install uv" >&2
    exit 1
fi

compile() {
    "$UV" pip compile pyproject.toml --universal --python-version 3.11 --quiet \
        --custom-compile-command "scripts/lock.sh" "$@"
}

extra_args=("$@")
compile --extra train --extra serve --extra dev --extra docs -o requirements/dev.lock "${extra_args[@]}"
compile --extra serve -c requirements/dev.lock -o requirements/serve.lock "${extra_args[@]}"
compile --extra train -c requirements/dev.lock -o requirements/train.lock "${extra_args[@]}"
echo "scripts/lock.sh: requirements/dev.lock, serve.lock and train.lock are up to date"
