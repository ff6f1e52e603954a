#!/usr/bin/env bash
# README command 1: set up, then serve the real SmolLM2-135M-Instruct through TorchServe on
# CPU (no hub) with RAG over examples/corpus and guards on, and ask it four questions.
# Leaves TorchServe running; stop it with
#   .venv/bin/torchserve --stop
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
torchserve --start --ncs --model-store model_store --models vllm --ts-config docker/config.properties \
  > logs/torchserve.out 2>&1

URL=http://127.0.0.1:8080/predictions/vllm/1.0/v1
echo "quickstart: waiting for the model to load (about a minute on 2 cores)..."
KEY=""
for _ in $(seq 1 900); do
  [ -z "$KEY" ] && [ -f key_file.json ] && \
    KEY=$(python -c 'import json; print(json.load(open("key_file.json"))["inference"]["key"])')
  if [ -n "$KEY" ] && curl -sf -m 5 -o /dev/null -H "Authorization: Bearer $KEY" "$URL/models"; then
    break
  fi
  sleep 1
done
if [ -z "$KEY" ]; then
  echo "quickstart: TorchServe did not come up; see logs/torchserve.out and logs/model_log.log" >&2
  exit 1
fi

python scripts/demo_requests.py --url "$URL" --key "$KEY"
cat <<MSG

TorchServe is serving SmolLM2 with RAG and guards at $URL
(OpenAI API; the auth key is in ./key_file.json).
  curl $URL/models -H "Authorization: Bearer $KEY"
Stop it with:  .venv/bin/torchserve --stop
MSG
