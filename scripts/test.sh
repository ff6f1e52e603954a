#!/usr/bin/env bash
# README command 2: set up, lint, then run every test (unit, integration, e2e on real
# TorchServe + vLLM on CPU), printing the time of each phase and the 15 slowest tests.
# Extra arguments go to pytest instead of `tests`, e.g.
#   scripts/test.sh tests/unit                   # the unit tests, in ~1 min
#   scripts/test.sh tests/e2e/test_launch.py     # one e2e file
# Tests run in TSVLLM_TEST_WORKERS pytest-xdist workers (default 2: this suite is sized for
# 2 cores and ~24 GB; each e2e group starts its own TorchServe and vLLM engines).
# The multi-node e2e tests need root (network namespaces), and the container tests podman,
# which scripts/container-tools.sh installs with apt-get; CI runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."

phases=()
phase() {  # phase NAME COMMAND...: run it, remember how long it took
  local name=$1 start=$SECONDS status=0
  shift
  "$@" || status=$?
  phases+=("$(printf '%-8s %5d s' "$name" $((SECONDS - start)))")
  return $status
}
report() {
  echo "== time by phase (pytest's own summary above splits the tests by folder and file) =="
  printf '%s\n' "${phases[@]}"
}
trap report EXIT

phase setup scripts/setup.sh
phase tools scripts/container-tools.sh  # podman for the image tests (tests/e2e/test_container.py)
phase lint sh -c '.venv/bin/ruff check . && .venv/bin/ruff format --check .'
phase tests .venv/bin/python -m pytest -n "${TSVLLM_TEST_WORKERS:-2}" --durations=15 \
  "${@:-tests}"
