"""``tsvllm bench serve``: vLLM's own OpenAI server (a) against TorchServe + VLLMHandler (b).

Both sides serve the same model folder with the same engine args (taken from a model
config), and stay up together; the same load (``tsvllm.bench.load``, run as a separate
client process) is sent to each, in alternating order round by round to cancel drift.
Reported per side: tok/s, req/s, TTFT p50/p99, inter-token latency, latency p50/p99, peak
RSS of the whole process tree, and cold start (start command to first token); then the
ratios b/a. Everything started is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tsvllm.serve import Ports, TorchServe


def first_token_s(
    base_url: str,
    model: str,
    *,
    start: float,
    proc: subprocess.Popen,
    timeout: float = 900,
    api_key: str | None = None,
) -> float:
    """Seconds from ``start`` until one completion token came back (polls until it does).

    Raises RuntimeError if the server process exits or ``timeout`` passes first.
    """
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    body = {"model": model, "prompt": "hi", "max_tokens": 1}
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}; see its log")
        try:
            resp = httpx.post(f"{base_url}/completions", json=body, headers=headers, timeout=30)
            if resp.status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no first token from {base_url} within {timeout:.0f}s")


class PeakRss:
    """Samples the summed RSS of a process tree in a thread; ``peak`` in MB."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
                total = sum(p.memory_info().rss for p in procs if p.is_running())
                self.peak = max(self.peak, total / 2**20)
            except psutil.Error:
                pass
            self._stop.wait(0.5)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def load(base_url: str, model: str, *, stream: bool, requests: int, concurrency: int,
         max_tokens: int, api_key: str | None = None) -> dict[str, Any]:  # fmt: skip
    cmd = [sys.executable, "-m", "tsvllm.bench.load", "--base-url", base_url, "--model", model,
           "--requests", str(requests), "--concurrency", str(concurrency),
           "--max-tokens", str(max_tokens)]  # fmt: skip
    if stream:
        cmd.append("--stream")
    if api_key:
        cmd += ["--api-key", api_key]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(out.stdout)


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric median over rounds (numbers only)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    return {
        k: round(statistics.median(r[k] for r in runs if r.get(k) is not None), 3)
        for k in keys
        if any(r.get(k) is not None for r in runs)
    }


def ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """b relative to a: throughput ratios, TTFT overhead in ms, cold-start ratio, RSS delta."""
    out: dict[str, Any] = {}
    for mode in ("non_stream", "stream"):
        if mode in a and mode in b and a[mode]["tok_per_s"]:
            out[f"{mode}_tok_per_s_b_over_a"] = round(
                b[mode]["tok_per_s"] / a[mode]["tok_per_s"], 3
            )
    if a.get("stream", {}).get("ttft_p50_ms") is not None:
        out["stream_ttft_p50_overhead_ms"] = round(
            b["stream"]["ttft_p50_ms"] - a["stream"]["ttft_p50_ms"], 1
        )
    if a.get("cold_start_s"):
        out["cold_start_b_over_a"] = round(b["cold_start_s"] / a["cold_start_s"], 3)
    if a.get("peak_rss_mb"):
        out["peak_rss_b_minus_a_mb"] = round(b["peak_rss_mb"] - a["peak_rss_mb"], 1)
    return out


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = list(report["sides"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (metric, label) in zip(
        axes, [("tok_per_s", "tokens/s"), ("ttft_p50_ms", "stream TTFT p50 (ms)")], strict=True
    ):
        modes = ["non_stream", "stream"] if metric == "tok_per_s" else ["stream"]
        width = 0.8 / len(sides)
        for i, side in enumerate(sides):
            values = [report["sides"][side][m].get(metric) or 0 for m in modes]
            ax.bar([x + i * width for x in range(len(modes))], values, width, label=side)
        ax.set_xticks([x + width * (len(sides) - 1) / 2 for x in range(len(modes))], modes)
        ax.set_title(label)
        ax.legend()
    fig.suptitle(report["title"])
    fig.tight_layout()
    fig.savefig(path)


def run(
    *,
    model_dir: Path,
    config: Path,
    workdir: Path,
    requests: int,
    concurrency: int,
    max_tokens: int,
    rounds: int,
    progress: Any = print,
) -> dict[str, Any]:
    from tsvllm.archive import build_archive
    from tsvllm.config import dump_model_config, load_model_config
    from tsvllm.engine.vllm_engine import handler_argv

    cfg = load_model_config(config)
    served = (cfg.handler.served_model_name or ["model"])[0]
    env = {**os.environ, **cfg.handler.env}
    workdir.mkdir(parents=True, exist_ok=True)
    sides: dict[str, dict[str, Any]] = {"a_vllm": {}, "b_torchserve": {}}
    procs: dict[str, int] = {}
    vllm_proc = None
    ts = None
    try:
        port = Ports.free().inference
        # both sides get the same handler section, pointed at the same model folder
        staged = cfg.model_copy(update={"handler": cfg.handler.model_copy(
            update={"model_path": str(model_dir), "served_model_name": [served]})})  # fmt: skip
        argv = handler_argv(staged.handler)
        progress("bench: starting vLLM's OpenAI server (a)")
        start = time.monotonic()
        vllm_proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *argv,
             "--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log"],
            env=env, stdout=(workdir / "vllm.log").open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        urls = {"a_vllm": f"http://127.0.0.1:{port}/v1"}
        sides["a_vllm"]["cold_start_s"] = round(
            first_token_s(urls["a_vllm"], served, start=start, proc=vllm_proc), 2
        )
        procs["a_vllm"] = vllm_proc.pid

        progress("bench: starting TorchServe + VLLMHandler (b)")
        cfg_path = dump_model_config(staged, workdir / "bench-config.yaml")
        store = workdir / "model_store"
        build_archive(cfg_path, name="bench", export_path=store, force=True)
        ts = TorchServe(workdir=workdir / "ts", model_store=store, models=["bench"],
                        auth="off")  # fmt: skip
        start = time.monotonic()
        ts.start()
        urls["b_torchserve"] = f"{ts.inference_url}/predictions/bench/1.0/v1"
        sides["b_torchserve"]["cold_start_s"] = round(
            first_token_s(urls["b_torchserve"], served, start=start, proc=ts.process), 2
        )
        procs["b_torchserve"] = ts.process.pid

        runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in sides}
        peaks = {s: 0.0 for s in sides}
        for r in range(rounds):
            order = list(sides) if r % 2 == 0 else list(reversed(sides))
            for stream in (False, True):
                mode = "stream" if stream else "non_stream"
                for side in order:
                    with PeakRss(procs[side]) as rss:
                        result = load(urls[side], served, stream=stream, requests=requests,
                                      concurrency=concurrency, max_tokens=max_tokens)  # fmt: skip
                    peaks[side] = max(peaks[side], rss.peak)
                    runs[side].setdefault(mode, []).append(result)
                    progress(
                        f"bench: round {r + 1}/{rounds} {mode:10s} {side:13s} "
                        f"{result['tok_per_s']:8.1f} tok/s  errors {result['errors']}"
                    )
        for side in sides:
            for mode, results in runs[side].items():
                sides[side][mode] = median_of(results)
            sides[side]["peak_rss_mb"] = round(peaks[side], 1)
    finally:
        if vllm_proc is not None and vllm_proc.poll() is None:
            os.killpg(vllm_proc.pid, signal.SIGTERM)
            try:
                vllm_proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(vllm_proc.pid, signal.SIGKILL)
        if ts is not None:
            ts.stop()
    return {
        "title": f"{requests} requests, concurrency {concurrency}, {max_tokens} tokens, "
        f"{rounds} rounds (medians)",
        "load": {
            "requests": requests,
            "concurrency": concurrency,
            "max_tokens": max_tokens,
            "rounds": rounds,
        },  # fmt: skip
        "sides": sides,
        "ratios": ratios(sides["a_vllm"], sides["b_torchserve"]),
    }


def main(
    *,
    model_dir: str,
    config: str,
    workdir: str,
    requests: int,
    concurrency: int,
    max_tokens: int,
    rounds: int,
    json_path: str | None,
    plot_path: str | None,
) -> int:
    report = run(model_dir=Path(model_dir).resolve(), config=Path(config),
                 workdir=Path(workdir).resolve(), requests=requests, concurrency=concurrency,
                 max_tokens=max_tokens, rounds=rounds)  # fmt: skip
    print(json.dumps(report, indent=2))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    if plot_path:
        plot(report, Path(plot_path))
    return 0
