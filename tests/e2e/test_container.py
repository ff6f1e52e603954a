"""The CPU image, built by scripts/image.sh and run under podman as a user and a hardened
platform run it: real TorchServe and vLLM inside, the tiny model mounted read-only, the
official ``openai`` client and plain HTTP from outside over loopback.

One image per run (:func:`image`); every container a fixture starts is removed in its
``finally``, whatever the tests did.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e.containers import VLLM_ARGS, Container, build_image, get, openai_client, podman
from tests.e2e.streams import STOP_MARGIN, TOKENS, finished_whole, join, start_streams
from tsvllm.contract import LIVENESS_ROUTE, OPENAI_BASE, READINESS_ROUTE

#: what every container here gets: the model, mounted read-only, and a small engine
MODEL_ENV = {
    "MODEL_PATH": "/models/tiny",
    "SERVED_MODEL_NAME": "tiny",
    "VLLM_ARGS": VLLM_ARGS,
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "TSVLLM_DEVICE": "cpu",
}
#: vLLM's engine needs more shared memory than a container's default 64 MB (docs/DEPLOY.md)
SHM = "--shm-size=1g"


@pytest.fixture(scope="session")
def image() -> str:
    return build_image()


def model_mount(tiny_model) -> str:
    return f"--volume={tiny_model}:/models/tiny:ro"


@pytest.fixture(scope="module")
def plain(image, tiny_model) -> Iterator[Container]:
    """``podman run -p 127.0.0.1:PORT:8080`` with the model mounted: token auth on, as a
    user starts it from the README."""
    container = Container(image, env=MODEL_ENV, flags=(SHM, model_mount(tiny_model)))
    try:
        container.wait_ready()
        yield container
    finally:
        container.remove()


def test_plain_run_serves_chat_stream_and_completions(plain):
    client = openai_client(plain, key=plain.key())
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens >= 1
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=8,
            stream=True,
        )
    )
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    completion = client.completions.create(model="tiny", prompt="Hello", max_tokens=4)
    assert completion.usage.completion_tokens >= 1


def test_plain_run_refuses_a_request_without_the_key(plain):
    import openai

    with pytest.raises(openai.AuthenticationError):
        openai_client(plain).models.list()
    assert get(plain, LIVENESS_ROUTE).status_code == 200  # probes need no key


def test_the_image_holds_no_build_settings_and_runs_as_non_root(image):
    """No pip settings, index, CA path or wheel folder of the build machine in the image's
    environment, labels or history; the user is 10001."""
    [info] = json.loads(podman("image", "inspect", image).stdout)
    history = podman("history", "--no-trunc", "--format=json", image).stdout
    config = json.dumps(info["Config"]) + history
    for needle in ("pypi", "/opt/wheels", "ca-certificates.crt", "constraints", "find-links"):
        assert needle not in config, needle
    assert info["Config"]["User"] == "10001"
    assert info["Config"]["Entrypoint"][:2] == ["tini", "--"]


def test_stop_drains_12_streams_and_exits_0(plain):
    """``podman stop -t 60`` (SIGTERM, then SIGKILL after 60 s) while 12 streams of 400
    tokens run: every stream finishes whole, the container exits 0 on its own, and no
    process of it is left."""
    key = plain.key()
    url = plain.url + OPENAI_BASE + "/chat/completions"
    running = start_streams(url, model="tiny", headers={"Authorization": f"Bearer {key}"})
    stop = podman("stop", "--time=60", plain.name, check=False, timeout=120)
    streams = join(running, timeout=60 + STOP_MARGIN)
    logs = plain.logs()
    finished_whole(streams, TOKENS, log=logs[-3000:])
    assert stop.returncode == 0, stop.stderr
    assert plain.wait_exit(timeout=10) == 0, logs[-3000:]
    assert "drain done in" in logs
    assert plain.processes() == []


def test_hardened_run_serves(image, tiny_model):
    """Read-only root with tmpfs only at /tmp (TSVLLM_WORKDIR, vLLM's and TorchServe's
    scratch), non-root user, every capability dropped, no new privileges."""
    container = Container(
        image,
        env={**MODEL_ENV, "TSVLLM_DISABLE_TOKEN_AUTH": "1"},
        flags=(
            SHM,
            model_mount(tiny_model),
            "--read-only",
            "--tmpfs=/tmp:rw,size=2g",
            "--user=10001:10001",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
        ),
    )
    try:
        container.wait_ready()
        assert get(container, READINESS_ROUTE).status_code == 200
        chat = openai_client(container).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert chat.usage.completion_tokens >= 1
        assert container.exec("id", "-u").strip() == "10001"
    finally:
        container.remove()
