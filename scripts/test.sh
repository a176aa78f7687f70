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
# One worker per core (CI has two): the suite waits on subprocesses, sockets and timeouts for
# much of its time, which a second worker fills. Whole files go to one worker (--dist loadfile),
# so each module-scoped fixture (moto worlds, reference bundles, images) is built once.
# At most 4 (each worker starts its own stand-in). Arguments come last: `-n 0` runs in one process.
.venv/bin/python -m pytest -q -p no:cacheprovider -n auto --maxprocesses 4 --dist loadfile "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$rc"
