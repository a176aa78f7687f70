#!/usr/bin/env bash
# Set up (.venv, dependencies, system tools) and run the whole test suite plus the linter.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh || exit 1
.venv/bin/ruff check . || exit 1
# Types (config in pyproject.toml: strict, every relaxation commented) and the import layers
# (no cycles, no module importing a layer above its own).
.venv/bin/mypy || exit 1
.venv/bin/lint-imports --no-cache >/dev/null || { .venv/bin/lint-imports --no-cache; exit 1; }
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$rc"
