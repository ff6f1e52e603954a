"""Code that runs on the host that starts TorchServe (never inside its worker).

``torchserve`` (start/stop/readiness of a TorchServe we own), ``launcher``
(``tsvllm launch``), ``entrypoint`` (the container's entrypoint), ``archive`` (model
archives). It shares only config, auth and constants with :mod:`tsvllm.worker`.
"""
