"""The runtime contract: what the host, the container and the deployment assets agree on.

The container (``docker/Dockerfile*``, :mod:`tsvllm.host.entrypoint`) always serves one
TorchServe model named :data:`MODEL_NAME`, version :data:`MODEL_VERSION`, so every route a
platform probes or calls is fixed here, once; the deployment generators
(:mod:`tsvllm.deploy`) write them into the assets, the entrypoint checks and announces them.

The size caps and timeout defaults are defined here too, once, for ``tsvllm launch``
(:mod:`tsvllm.host.launcher`), the container and the shipped ``docker/config.properties``
(a unit test checks that file against these values); docs/TORCHSERVE.md has them in one table.

A bottom-floor module: it imports only :mod:`tsvllm.urls`, so ``host/`` and ``deploy/`` (and
the config) may all import it.
"""

from __future__ import annotations

from tsvllm import urls

#: TorchServe model name and version inside the container (the URL's fixed segments)
MODEL_NAME = "vllm"
MODEL_VERSION = "1.0"
#: TorchServe's ports (the container's; ``tsvllm launch --port P`` uses P, P+1, ...)
INFERENCE_PORT = 8080
MANAGEMENT_PORT = 8081
METRICS_PORT = 8082
GRPC_INFERENCE_PORT = 7070
GRPC_MANAGEMENT_PORT = 7071
PREFIX = f"/predictions/{MODEL_NAME}/{MODEL_VERSION}"
#: tsvllm's frontend plugin: 200 whenever the frontend answers (process alive). Not /ping,
#: which is 503 while the model loads or its worker restarts (tsvllm.host.frontend_plugin)
LIVENESS_ROUTE = "/alive"
#: the handler's v1/models: it answers once the model is READY (model ready)
READINESS_ROUTE = f"{PREFIX}/{urls.MODELS}"
CHAT_ROUTE = f"{PREFIX}/{urls.CHAT_COMPLETIONS}"
OPENAI_BASE = f"{PREFIX}/v1"
VERTEX_PREDICT_ROUTE = f"{PREFIX}/{urls.VERTEX_PREDICT}"

# -- size caps and timeout defaults (docs/TORCHSERVE.md, "Size caps and timeouts") ---------

#: config.properties ``max_request_size``: the frontend's hard cap on a request body (its
#: 413 has no OpenAI body), above the handler's own :data:`MAX_BODY_BYTES`
MAX_REQUEST_BYTES = 8 << 20
#: config.properties ``max_response_size``: the frontend's cap on one reply (a
#: non-streamed reply, or one chunk of a stream)
MAX_RESPONSE_BYTES = 32 << 20
#: config.properties ``default_response_timeout`` (seconds): for a model whose config sets
#: no ``responseTimeout``
FRONTEND_RESPONSE_TIMEOUT_S = 300
#: model-config ``responseTimeout`` (seconds a request may take before the frontend fails it)
RESPONSE_TIMEOUT_S = 1200
#: model-config ``startupTimeout`` (seconds the engine may take to start)
STARTUP_TIMEOUT_S = 1200
#: model-config ``handler.max_body_bytes``: larger bodies get an OpenAI-style 413
MAX_BODY_BYTES = 1 << 20
#: model-config ``handler.request_timeout_s``: then the generation is aborted (504)
REQUEST_TIMEOUT_S = 300.0
