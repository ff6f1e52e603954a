#!/usr/bin/env bash
# README command 1: set up, then serve the real SmolLM2-135M-Instruct through TorchServe on
# CPU (no hub) with RAG over examples/corpus and guards on, and ask it four questions.
# Leaves TorchServe running; stop it with
#   .venv/bin/torchserve --stop
# If the model never becomes ready (or a request fails), it stops with the reason, exit 1,
# and stops the TorchServe it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
. .venv/bin/activate

tsvllm demo-model smollm2 --out models/smollm2
tsvllm index examples/corpus --out models/rag_index --force
tsvllm archive model_configs/smollm2-rag-cpu.yaml --name vllm --export-path model_store \
  --handler handlers/rag_guard_handler.py --force

if curl -s -o /dev/null http://127.0.0.1:8080/ping; then
  echo "quickstart: something already listens on 127.0.0.1:8080 (torchserve --stop?)" >&2
  exit 1
fi
rm -f key_file.json
mkdir -p logs  # TorchServe's own logs go here too

# On any failure from here on (the model never became ready, a request failed, Ctrl-C), stop
# the TorchServe this script started; on success it keeps serving.
stop_on_failure() {
  local status=$?
  if [ "$status" -ne 0 ]; then
    echo "quickstart: failed (exit $status); stopping the TorchServe it started" >&2
    torchserve --stop >/dev/null 2>&1 || true
  fi
  exit "$status"
}
trap stop_on_failure EXIT
trap 'exit 130' INT TERM
torchserve --start --ncs --model-store model_store --models vllm --ts-config docker/config.properties \
  > logs/torchserve.out 2>&1

URL=http://127.0.0.1:8080/predictions/vllm/1.0/v1
echo "quickstart: waiting for the model to load (about a minute on 2 cores)..."
# waits for GET v1/models to answer 200, then asks the four questions; exits 1 with the
# reason, asking nothing, when the engine can never start or is not ready in 900 s
if ! python scripts/demo_requests.py --url "$URL" --key-file key_file.json --wait 900; then
  echo "quickstart: see logs/torchserve.out and logs/model_log.log" >&2
  exit 1
fi
KEY=$(python -c 'import json; print(json.load(open("key_file.json"))["inference"]["key"])')
cat <<MSG

TorchServe is serving SmolLM2 with RAG and guards at $URL
(OpenAI API; the auth key is in ./key_file.json).
  curl $URL/models -H "Authorization: Bearer $KEY"
Stop it with:  .venv/bin/torchserve --stop
MSG
