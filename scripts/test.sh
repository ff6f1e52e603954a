#!/usr/bin/env bash
# README command 2: set up, lint, then run every test (unit, integration, e2e on real
# TorchServe + vLLM on CPU). Extra arguments go to pytest, e.g. scripts/test.sh tests/unit
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "${@:-tests}"
