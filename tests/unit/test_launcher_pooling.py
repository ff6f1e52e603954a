"""The quick start and the container entrypoint with a pooling model (faked server): the
routes come from the handler's 404 for an unknown route, the printed example is an
embeddings request (chat for a model that generates, and when the routes are unknown), and
the container warns when Vertex AI's predict route is not served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tsvllm.host import entrypoint, launcher
from tsvllm.host.torchserve import Ports

POOLING = (
    "unknown route 'tsvllm-routes'; this model serves /v1/models, /health, /version, /tokenize, "
    "/detokenize, /pooling, /v1/embeddings, /v2/embed, /score, /v1/score, /rerank, /v1/rerank"
)
GENERATING = (
    "unknown route 'tsvllm-routes'; this model serves /v1/completions, /v1/chat/completions, "
    "/vertex/predict, /v1/models, /health, /v1/responses"
)


class FakeTs:
    inference_url = "http://127.0.0.1:1234"
    ports = Ports(1234, 1235, 1236, 1237, 1238)
    key_file = Path("/tmp/key_file.json")
    management_socket = Path("/tmp/management.sock")
    control_dir = Path("/tmp/control")

    def __init__(self, status: int, message: str | None, *, keys: dict | None = None):
        self.status, self.message = status, message
        self._keys = {"inference": "k"} if keys is None else keys
        self.gets: list[tuple[str, str | None]] = []

    def keys(self) -> dict:
        return self._keys

    def _get(self, url: str, *, key: str | None):
        self.gets.append((url, key))
        if self.message is None:
            raise OSError("connection refused")
        return self.status, json.dumps({"error": {"message": self.message, "code": self.status}})


def test_routes_come_from_the_404_of_an_unknown_route():
    ts = FakeTs(404, POOLING)
    routes = launcher.served_routes(ts, "minilm")
    assert ts.gets == [("http://127.0.0.1:1234/predictions/minilm/1.0/tsvllm-routes", "k")]
    assert routes[:2] == ["/v1/models", "/health"] and "/v1/embeddings" in routes
    assert "/v1/chat/completions" not in routes


@pytest.mark.parametrize(
    "ts",
    [FakeTs(404, None), FakeTs(503, "the engine is starting"), FakeTs(404, "no list here")],
)
def test_routes_are_unknown_when_the_answer_does_not_list_them(ts):
    assert launcher.served_routes(ts, "m") is None


def test_example_request_fits_the_model():
    pooling = launcher.served_routes(FakeTs(404, POOLING), "m")
    route, body = launcher.example_request(pooling, "minilm")
    assert route == "embeddings" and body["model"] == "minilm" and body["input"]
    generating = launcher.served_routes(FakeTs(404, GENERATING), "m")
    assert launcher.example_request(generating, "tiny")[0] == "chat/completions"
    assert launcher.example_request(None, "tiny")[0] == "chat/completions"
    score_only = ["/v1/models", "/health", "/score", "/v1/score"]
    assert launcher.example_request(score_only, "ce")[0] == "score"


def _config(tmp_path: Path, served: str) -> Path:
    path = tmp_path / "model-config.yaml"
    path.write_text(
        yaml.safe_dump({"handler": {"model_path": "/m", "served_model_name": [served]}})
    )
    return path


def test_the_launcher_prints_an_embeddings_curl_for_a_pooling_model(tmp_path, capsys):
    launcher._announce(FakeTs(404, POOLING), "minilm", _config(tmp_path, "minilm"))
    out = capsys.readouterr().out
    assert "/predictions/minilm/1.0/v1/embeddings" in out and "chat/completions" not in out
    curl = next(line for line in out.splitlines() if "curl " in line)
    body = json.loads(curl.split("-d '", 1)[1].rstrip("'"))
    assert body == {"model": "minilm", "input": ["Hello", "Bonjour"]}
    assert "a pooling model (no completions or chat)" in out and "/v1/score" in out


def test_the_launcher_prints_a_chat_curl_for_a_model_that_generates(tmp_path, capsys):
    launcher._announce(FakeTs(404, GENERATING, keys={}), "tiny", _config(tmp_path, "tiny"))
    out = capsys.readouterr().out
    curl = next(line for line in out.splitlines() if "curl " in line)
    assert "/predictions/tiny/1.0/v1/chat/completions -H" in curl and "Authorization" not in curl
    assert json.loads(curl.split("-d '", 1)[1].rstrip("'"))["messages"]
    assert "pooling" not in out
    assert "token auth is off; management API: http://127.0.0.1:1235 (no key)" in out


def test_the_entrypoint_names_a_pooling_models_routes_and_warns_about_vertex(monkeypatch, capsys):
    ts = FakeTs(404, POOLING)
    env = {"AIP_PREDICT_ROUTE": "/predictions/vllm/1.0/vertex/predict"}
    entrypoint._announce_routes(ts, env)
    captured = capsys.readouterr()
    assert "a pooling model (no completions or chat)" in captured.out
    assert "/v1/embeddings" in captured.out
    assert "AIP_PREDICT_ROUTE=/predictions/vllm/1.0/vertex/predict is not served" in captured.err
    entrypoint._announce_routes(FakeTs(404, GENERATING), env)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
