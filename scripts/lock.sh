#!/usr/bin/env bash
# Re-lock the dependencies after changing pyproject.toml: exact versions with hashes for every
# platform (uv's universal resolution), pinned to the environment the suite passed in
# (`pip freeze` of the current venv), so a fresh install never runs a resolver.
#   requirements/base.lock   the package alone (the README's `fleetscore demo` command)
#   requirements/all.lock    every extra (the container image)
#   requirements/test.lock   every extra and the test tools (scripts/test.sh, CI)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check uv
pins=$(mktemp)
trap 'rm -f "$pins"' EXIT
python -m pip freeze --exclude-editable | grep -v -i -E '^(fleetscore|uv)(==| @)' > "$pins"
lock() {
  local out=$1; shift
  python -m uv pip compile pyproject.toml "$@" -c "$pins" --generate-hashes --universal --python-version 3.11 \
    --no-header --quiet -o "$out"
  # the pins file is temporary: name what it was instead of its path
  sed -i "s#-c ${pins}#pinned to the tested environment#" "$out"
}
lock requirements/base.lock
lock requirements/all.lock --extra all
lock requirements/test.lock --extra all --extra test
