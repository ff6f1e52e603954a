"""The handler's routes: the URL part after ``/predictions/<model>/<version>/``.

Shared by the worker (which serves them, :mod:`tsvllm.worker.routes`) and the host
(probes, deployment assets), which must not import the worker's code.
"""

COMPLETIONS = "v1/completions"
CHAT_COMPLETIONS = "v1/chat/completions"
MODELS = "v1/models"
HEALTH = "health"
#: vLLM's server load (``--enable-server-load-tracking``)
LOAD = "load"
#: Vertex AI's ``{"instances": [...]}`` envelope (:mod:`tsvllm.worker.adapters`)
VERTEX_PREDICT = "vertex/predict"
