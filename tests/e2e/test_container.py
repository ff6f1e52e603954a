"""The CPU image, built by scripts/image.sh and run under podman as a user, a hardened
platform, Azure ML and Vertex AI run it: real TorchServe and vLLM inside, the tiny model
mounted read-only (or fetched from a gs:// URI), the official ``openai`` client and plain
HTTP from outside over loopback.

One image per run (:func:`image`); every container a fixture starts is removed in its
``finally``, whatever the tests did.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import yaml

from tests.e2e.containers import (
    REPO,
    VLLM_ARGS,
    Container,
    build_image,
    get,
    openai_client,
    podman,
)
from tests.e2e.fake_gcs import serving as fake_gcs_serving
from tests.e2e.launched import free_port_block
from tests.e2e.streams import STOP_MARGIN, TOKENS, finished_whole, join, start_streams
from tsvllm.cli import main as cli
from tsvllm.contract import LIVENESS_ROUTE, OPENAI_BASE, READINESS_ROUTE, VERTEX_PREDICT_ROUTE

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


#: the container's listening TCP addresses, read in it with psutil (tsvllm depends on it)
LISTENING = (
    "import json, psutil; print(json.dumps(sorted({(c.laddr.ip, c.laddr.port) for c in "
    "psutil.net_connections('inet') if c.status == psutil.CONN_LISTEN})))"
)


def test_only_inference_listens_beyond_loopback_and_the_exec_probes_pass(plain):
    """Management, metrics, gRPC and the engine's own ports (torch.distributed, gloo) stay
    on the container's loopback (or a Unix socket): the one port reachable from the pod's
    network is inference, 8080. The exec probes (for platforms where
    token auth stays on) read the key TorchServe wrote and answer 0."""
    listening = json.loads(plain.exec("python3", "-c", LISTENING))
    loopback = ("127.", "::1", "::ffff:127.")
    outside = {port for ip, port in listening if not ip.startswith(loopback)}
    assert outside == {8080}, listening
    for kind in ("ready", "alive"):
        plain.exec("python3", "-m", "tsvllm.host.entrypoint", "--probe", kind)  # exit 0


def test_plain_run_refuses_a_request_without_the_key(plain):
    import openai

    with pytest.raises(openai.AuthenticationError):
        openai_client(plain).models.list()
    assert get(plain, LIVENESS_ROUTE).status_code == 200  # probes need no key


def test_the_gpu_dockerfile_builds_up_to_the_step_that_needs_vllms_cuda_base(image):
    """No GPU and no registry here: docker/Dockerfile is built on a stand-in for
    vllm/vllm-openai (the CPU Dockerfile's ``runtime`` stage: Debian, Python 3, venv) up to
    its ``dependencies`` stage, with the same build settings. What it installs imports; the
    next step needs the base's vLLM (CUDA), which the stand-in does not have."""
    stand_in, gpu = "localhost/tsvllm-test-gpu-base:stand-in", "localhost/tsvllm-test-gpu:deps"
    try:
        build_image(TSVLLM_TARGET="runtime", TSVLLM_IMAGE=stand_in)
        built = build_image(
            TSVLLM_DOCKERFILE="docker/Dockerfile",
            TSVLLM_TARGET="dependencies",
            TSVLLM_IMAGE_BASE=stand_in,
            TSVLLM_IMAGE=gpu,
        )
        assert built == gpu
        python = ("run", "--rm", "--entrypoint=/opt/venv/bin/python", gpu, "-c")
        podman(*python, "import ts, model_archiver, google.cloud.storage, boto3, pydantic")
        missing = podman(*python, "import vllm", check=False)
        assert "No module named 'vllm'" in missing.stderr, missing.stderr
    finally:
        podman("rmi", "--force", gpu, stand_in, check=False)


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


@pytest.fixture(scope="module")
def azure_ml(tmp_path_factory, image) -> tuple[dict, dict]:
    """The deployment and environment YAML ``tsvllm deploy azureml`` writes for the tiny
    config and this image."""
    out = tmp_path_factory.mktemp("azureml")
    config = str(REPO / "model_configs" / "tiny-cpu.yaml")
    assert cli(["deploy", "azureml", config, "--out", str(out), "--image", image]) == 0
    load = lambda name: yaml.safe_load((out / name).read_text())  # noqa: E731
    return load("deployment.yml"), load("environment.yml")


def test_azure_ml_as_its_yaml_runs_it(image, tiny_model, azure_ml):
    """The environment variables of deployment.yml, the model mounted read-only at its
    model_mount_path (AZUREML_MODEL_DIR, as Azure sets it), and the three routes of
    environment.yml on the port they name. Azure's schema has no shared-memory setting:
    the run gives the ~400 MiB vLLM needs (docs/DEPLOY.md, "Shared memory")."""
    deployment, environment = azure_ml
    routes = environment["inference_config"]
    [port] = {route["port"] for route in routes.values()}
    mount = deployment["model_mount_path"]
    env = {**deployment["environment_variables"], "AZUREML_MODEL_DIR": mount}
    volume = f"--volume={tiny_model}:{mount}:ro"
    container = Container(image, env=env, flags=(SHM, volume), port=port)
    try:
        container.wait_ready()
        assert get(container, routes["liveness_route"]["path"]).status_code == 200
        assert get(container, routes["readiness_route"]["path"]).status_code == 200
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        scored = httpx.post(container.url + routes["scoring_route"]["path"], json=body, timeout=120)
        assert scored.status_code == 200, scored.text
        assert scored.json()["choices"][0]["message"]["role"] == "assistant"
    finally:
        container.remove()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("missing model dir", "/models/missing"),
        ("bad model config", "not_a_key"),
        ("port in use", "Address already in use"),
        ("default shared memory", "--shm-size"),  # vLLM's queues need ~400 MiB of /dev/shm
        ("wrong Vertex route", "AIP_PREDICT_ROUTE=/predict"),
    ],
)
def test_a_bad_configuration_exits_non_zero_within_60_s_naming_why(
    image, tiny_model, tmp_path, case, reason
):
    env, flags = {**MODEL_ENV}, [SHM, model_mount(tiny_model)]
    holder = None
    if case == "missing model dir":
        env["MODEL_PATH"] = "/models/missing"
    elif case == "default shared memory":
        flags = [model_mount(tiny_model)]
    elif case == "wrong Vertex route":
        env["AIP_PREDICT_ROUTE"] = "/predict"
    elif case == "bad model config":
        bad = tmp_path / "bad-config.yaml"
        bad.write_text("asyncCommunication: true\nnot_a_key: 1\nhandler: {model_path: m}\n")
        bad.chmod(0o644)
        flags.append(f"--volume={bad}:/config/model-config.yaml:ro")
        env["TSVLLM_CONFIG"] = "/config/model-config.yaml"
    else:  # another process of the pod holds the inference port
        hold = "import socket, time; s = socket.socket(); s.bind(('', 8080)); s.listen(); "
        holder = Container(
            image,
            env={},
            flags=("--entrypoint=python3",),
            command=("-u", "-c", hold + "print('holding 8080'); time.sleep(600)"),
            publish=False,
        )
        holder.wait_for_log("holding 8080", timeout=60)
        flags = [SHM, model_mount(tiny_model), f"--network=container:{holder.name}"]
    container = Container(image, env=env, flags=tuple(flags), publish=holder is None)
    try:
        code = container.wait_exit(timeout=60)
        logs = container.logs()
        assert code not in (None, 0), logs[-3000:]
        assert reason in "\n".join(logs.splitlines()[-8:]), logs[-3000:]
    finally:
        container.remove()
        if holder is not None:
            holder.remove()


def test_vertex_ai_as_it_runs_the_container(image, tiny_model):
    """The AIP_* variables Vertex AI sets; the weights from AIP_STORAGE_URI, a gs:// URI
    served by a GCS emulator on loopback; predict through the envelope. The container
    shares the host's network so that it reaches the emulator there (whose object links
    name 127.0.0.1), and binds loopback only (TSVLLM_BIND)."""
    port = free_port_block()  # the inference port, then management and metrics
    env = {k: v for k, v in MODEL_ENV.items() if k != "MODEL_PATH"}
    with fake_gcs_serving(tiny_model) as gcs_port:
        env |= {
            "AIP_HTTP_PORT": str(port),
            "AIP_PREDICT_ROUTE": VERTEX_PREDICT_ROUTE,
            "AIP_HEALTH_ROUTE": READINESS_ROUTE,
            "AIP_STORAGE_URI": "gs://models/tiny",
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{gcs_port}",
            "TSVLLM_DISABLE_TOKEN_AUTH": "1",  # Vertex AI authenticates
            "TSVLLM_BIND": "127.0.0.1",
        }
        container = Container(
            image, env=env, flags=(SHM, "--network=host"), port=port, publish=False
        )
        try:
            container.wait_ready()
            assert "downloading gs://models/tiny" in container.logs()
            assert get(container, READINESS_ROUTE).status_code == 200
            body = {
                "instances": [{"prompt": "one", "max_tokens": 3}, {"prompt": "two"}],
                "parameters": {"temperature": 0, "ignore_eos": True, "max_tokens": 5},
            }
            reply = httpx.post(container.url + VERTEX_PREDICT_ROUTE, json=body, timeout=120)
            assert reply.status_code == 200, reply.text
            usage = [p["usage"]["completion_tokens"] for p in reply.json()["predictions"]]
            assert usage == [3, 5]
            chat = {
                "instances": ["hi", {"messages": [{"role": "user", "content": "yo"}]}],
                "parameters": {"@requestFormat": "chatCompletions", "max_tokens": 2},
            }
            reply = httpx.post(container.url + VERTEX_PREDICT_ROUTE, json=chat, timeout=120)
            assert reply.status_code == 200, reply.text
            assert [p["object"] for p in reply.json()["predictions"]] == ["chat.completion"] * 2
        finally:
            container.remove()
