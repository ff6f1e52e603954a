"""Runtime LoRA (handler.runtime_lora): load an adapter made in the test, use it, unload it,
through TorchServe and behind the API key. (That the routes do not exist without it is
checked on the session server, in test_vllm_routes.py.)"""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import archive, base_url, client, started
from tests.e2e.lora import build_lora
from tsvllm.host.torchserve import TorchServe

PROMPT = {"prompt": "The river", "max_tokens": 12, "temperature": 0}


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("runtime-lora")
    store = root / "model_store"
    engine = {"max_model_len": 512, "enforce_eager": True, "dtype": "bfloat16"}
    engine.update(enable_lora=True, max_lora_rank=8, max_loras=2)
    archive(
        "tiny-cpu.yaml",
        model=tiny_model,
        store=store,
        name="lora",
        runtime_lora=True,
        vllm_engine_config=engine,
    )
    ts = TorchServe(workdir=root / "ts", model_store=store, models=["lora"])
    try:
        yield started(ts, ["lora"]), build_lora(tiny_model, root / "adapter")
    finally:
        ts.stop()


def admin(ts: TorchServe, action: str, body: dict, *, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    url = f"{base_url(ts, 'lora')}/{action}_lora_adapter"
    return httpx.post(url, json=body, headers=headers, timeout=120)


def test_load_use_and_unload_an_adapter_at_runtime(lora_server):
    ts, adapter = lora_server
    key = ts.keys()["inference"]
    openai = client(ts, key, "lora")
    base = openai.completions.create(model="tiny", **PROMPT).choices[0].text

    assert (
        admin(ts, "load", {"lora_name": "mine", "lora_path": str(adapter)}, key=None).status_code
        == 401
    )
    loaded = admin(ts, "load", {"lora_name": "mine", "lora_path": str(adapter)}, key=key)
    assert loaded.status_code == 200, loaded.text
    assert "mine" in [m.id for m in openai.models.list().data]
    tuned = openai.completions.create(model="mine", **PROMPT).choices[0].text
    assert tuned != base  # the adapter changes the output (greedy, same prompt)

    unloaded = admin(ts, "unload", {"lora_name": "mine"}, key=key)
    assert unloaded.status_code == 200, unloaded.text
    assert "mine" not in [m.id for m in openai.models.list().data]
    gone = httpx.post(
        f"{base_url(ts, 'lora')}/completions",
        json={"model": "mine", **PROMPT},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert gone.status_code == 404
