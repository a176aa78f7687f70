#!/usr/bin/env bash
# The README's first command: set up .venv, then run the main job end to end on the embedded
# default (a local S3+EC2 endpoint, a generated key pair, a small root filesystem).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python scripts/demo.py "$@"
