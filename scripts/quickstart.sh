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
# The inference key: tsvllm's, checked by the handler (401 with OpenAI's body), with no
# lifetime: the printed command works for as long as this server runs. TorchServe's own token
# auth is off (its keys expire after an hour, then get a 400 no handler can change); the
# management API listens on a Unix socket in the private folder $RUN, not on a TCP port.
RUN=.tsvllm/quickstart
tsvllm key --new --file key_file.json >/dev/null
CONFIG=$(python -c 'import sys; from tsvllm.host.launcher import write_handler_auth_config as w
print(w(sys.argv[1], model_store="model_store"))' "$RUN")
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
TSVLLM_API_KEY_FILE="$PWD/key_file.json" torchserve --start --ncs --model-store model_store \
  --models vllm --ts-config "$CONFIG" > logs/torchserve.out 2>&1

URL=http://127.0.0.1:8080/predictions/vllm/1.0/v1
echo "quickstart: waiting for the model to load (about a minute on 2 cores)..."
# waits for GET v1/models to answer 200, then asks the four questions; exits 1 with the
# reason, asking nothing, when the engine can never start or is not ready in 900 s
if ! python scripts/demo_requests.py --url "$URL" --key-file key_file.json --wait 900; then
  echo "quickstart: see logs/torchserve.out and logs/model_log.log" >&2
  exit 1
fi
KEY=$(tsvllm key --file key_file.json)
cat <<MSG

TorchServe is serving SmolLM2 with RAG and guards at $URL
(OpenAI API). Its key works for as long as this server runs; a request without it gets 401:
  curl $URL/models -H "Authorization: Bearer $KEY"
Print the key again: .venv/bin/tsvllm key   (replace it: .venv/bin/tsvllm key --new)
Management API (owner only): curl --unix-socket $RUN/management.sock http://localhost/models
Stop it with:  .venv/bin/torchserve --stop
MSG
