"""``tsvllm bench serve``: vLLM's own OpenAI server against TorchServe + our handlers.

Sides (``--sides``): **a** vLLM's own OpenAI server, the reference; **b** TorchServe +
VLLMHandler with hooks off; **c** TorchServe + the RAG and rule-guards handler; **b0** b
with TorchServe's own worker path, to measure what ``handler.lean_worker`` saves. Every
side serves the same model folder with the same engine args (from a model config) and all
stay up together. For each load shape (``--shapes``: requests x concurrency x tokens) the
same load (``tsvllm.bench.load``, a separate client process, ``ignore_eos``) goes to each
side, non-streaming then streaming, in alternating side order round by round to cancel
drift. Reported per side: tok/s, req/s, TTFT p50/p99, inter-token latency, latency
p50/p99, CPU milliseconds per request, peak RSS of the whole process tree and cold start
(start command to first reply); then every side's ratios to a. Everything started is
stopped at the end, also on Ctrl-C.

A load shape may name its API: ``chat:64x16x32`` drives ``v1/chat/completions``,
``embeddings:256x16x8`` drives ``v1/embeddings`` with 8 texts per request (never streamed;
tok/s counts input tokens), a bare ``64x16x32`` drives ``v1/completions``.

**CPU per request** (:mod:`tsvllm.bench.usage`): each side's CPU time during a load per
request served, split by role (engine, frontend, server); ``serving`` = frontend + server,
what the HTTP/OpenAI layer costs, which the client and the machine's noise do not change as
much as they change throughput. Streamed loads also give it per chunk.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tsvllm.bench import usage
from tsvllm.host.torchserve import Ports, TorchServe


def first_token_s(
    base_url: str,
    model: str,
    *,
    start: float,
    proc: subprocess.Popen,
    timeout: float = 900,
    api_key: str | None = None,
    api: str = "completions",
) -> float:
    """Seconds from ``start`` until one completion token (for ``api="embeddings"``: one
    embedding) came back (polls until it does).

    Raises RuntimeError if the server process exits or ``timeout`` passes first.
    """
    import httpx

    from tsvllm.bench.load import APIS

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if api == "embeddings":
        body: dict[str, Any] = {"model": model, "input": ["hi"]}
    else:
        body = {"model": model, "prompt": "hi", "max_tokens": 1}
        api = "completions"
    while time.monotonic() - start < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}; see its log")
        try:
            resp = httpx.post(f"{base_url}/{APIS[api]}", json=body, headers=headers, timeout=30)
            if resp.status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no first token from {base_url} within {timeout:.0f}s")


def load(
    base_url: str,
    model: str,
    *,
    stream: bool,
    requests: int,
    concurrency: int,
    max_tokens: int,
    api_key: str | None = None,
    api: str = "completions",
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        "-m",
        "tsvllm.bench.load",
        "--base-url",
        base_url,
        "--model",
        model,
        "--requests",
        str(requests),
        "--concurrency",
        str(concurrency),
        "--max-tokens",
        str(max_tokens),
        "--api",
        api,
    ]
    if stream:
        cmd.append("--stream")
    if api_key:
        cmd += ["--api-key", api_key]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=3600)
    return json.loads(out.stdout)


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric median over rounds (numbers only), and each round's tok/s (the spread)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    medians = {
        k: round(statistics.median(r[k] for r in runs if r.get(k) is not None), 3)
        for k in keys
        if any(r.get(k) is not None for r in runs)
    }
    return {**medians, "rounds_tok_per_s": [r["tok_per_s"] for r in runs]}


#: the figures of a load whose b/a ratio the report gives (each where both sides have it)
RATIO_METRICS = (
    "tok_per_s",
    "req_per_s",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "itl_p50_ms",
    "itl_p99_ms",
    "latency_p50_ms",
    "latency_p99_ms",
    *(f"cpu_ms_per_req_{role}" for role in (*usage.ROLES, "serving", "total")),
    "cpu_ms_per_chunk_serving",
)


def ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Side ``b`` relative to side ``a`` for one load shape: ``<mode>_<metric>`` = b / a for
    each of :data:`RATIO_METRICS`, and the stream's TTFT overhead in ms."""
    out: dict[str, Any] = {}
    for mode in ("non_stream", "stream"):
        fa, fb = a.get(mode, {}), b.get(mode, {})
        for metric in RATIO_METRICS:
            if fa.get(metric) and fb.get(metric) is not None:
                out[f"{mode}_{metric}"] = round(fb[metric] / fa[metric], 3)
    if a.get("stream", {}).get("ttft_p50_ms") is not None:
        out["stream_ttft_p50_overhead_ms"] = round(
            b["stream"]["ttft_p50_ms"] - a["stream"]["ttft_p50_ms"], 1
        )
    return out


def side_ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """What does not depend on the load shape: cold start ratio and the RSS delta."""
    out: dict[str, Any] = {}
    if a.get("cold_start_s"):
        out["cold_start"] = round(b["cold_start_s"] / a["cold_start_s"], 3)
    if a.get("peak_rss_mb"):
        out["peak_rss_delta_mb"] = round(b["peak_rss_mb"] - a["peak_rss_mb"], 1)
    return out


#: how to install what ``--plot`` needs
PLOT_INSTALL = "pip install -e '.[plot]' (in a checkout; else pip install 'tsvllm[plot]')"


def _pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def check_plot(path: Path) -> None:
    """Raise ValueError now if ``--plot path`` could not be written after the run: matplotlib
    missing (the message names the install), or no folder to write it in."""
    try:
        _pyplot()
    except ImportError as exc:
        raise ValueError(
            f"--plot needs matplotlib, which cannot be imported ({exc}); install it with "
            f"{PLOT_INSTALL}, or leave --plot out"
        ) from None
    if not path.parent.is_dir():
        raise ValueError(f"--plot {path}: the folder {path.parent} does not exist")


def plot(report: dict[str, Any], path: Path) -> None:
    """Throughput per side and mode (bars: medians, dots: rounds), stream TTFT and the
    serving layer's CPU per request, one row of panels per load shape."""
    plt = _pyplot()
    sides = list(report["sides"])
    shapes = report["load"]["shapes"]
    panels = [
        ("tok_per_s", "tokens/s", ["non_stream", "stream"]),
        ("ttft_p50_ms", "stream TTFT p50 (ms)", ["stream"]),
        ("cpu_ms_per_req_serving", "serving CPU ms/request", ["non_stream", "stream"]),
    ]
    fig, axes = plt.subplots(
        len(shapes), len(panels), figsize=(15, 3.8 * len(shapes)), squeeze=False
    )
    for row, shape in zip(axes, shapes, strict=True):
        for ax, (metric, label, modes) in zip(row, panels, strict=True):
            width = 0.8 / len(sides)
            for i, side in enumerate(sides):
                runs = report["sides"][side]["shapes"][shape]
                values = [runs.get(m, {}).get(metric) or 0 for m in modes]
                xs = [x + i * width for x in range(len(modes))]
                ax.bar(xs, values, width, label=side)
                if metric == "tok_per_s":  # each round as a dot: the spread behind the median
                    for x, m in zip(xs, modes, strict=True):
                        dots = runs.get(m, {}).get("rounds_tok_per_s", [])
                        ax.plot([x] * len(dots), dots, "k.", markersize=4)
            ax.set_xticks([x + width * (len(sides) - 1) / 2 for x in range(len(modes))], modes)
            ax.set_title(f"{shape}: {label}")
            ax.legend(fontsize=8)
    import textwrap

    title = textwrap.fill(report["title"], 110)
    fig.suptitle(title)
    # room at the top for the title's lines (tight_layout alone lets it overlap the panels)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 * (title.count("\n") + 1.5) / fig.get_figheight()))
    fig.savefig(path)


#: what each side serves; "a" is the reference the others are divided by
SIDES = {
    "a": "vLLM's own OpenAI server",
    "b": "TorchServe + VLLMHandler, hooks off",
    "c": "TorchServe + RAG + rule guards (handlers/rag_guard_handler.py)",
    "b0": "as b, with TorchServe's own worker path (handler.lean_worker: false)",
}
RAG_GUARDS = {
    "rag": {"index": "rag_index", "k": 3, "min_score": 0.25},
    "guards": {
        "pii": {"mode": "redact", "stages": ["input", "output"]},
        "secrets": {"mode": "block", "stages": ["input", "context", "output"]},
        "injection": {"mode": "block", "stages": ["input", "context"]},
        "deny": {"terms": ["zorblax self-destruct code"], "mode": "block"},
    },
}


def parse_load(text: str) -> tuple[str, tuple[int, int, int]]:
    """``"chat:64x16x32"`` → ("chat", (64, 16, 32)); no ``API:`` prefix means completions."""
    from tsvllm.bench.load import APIS

    api, sep, shape = text.rpartition(":")
    api = api if sep else "completions"
    if api not in APIS:
        raise ValueError(f"load shape {text!r}: unknown API {api!r}; use {', '.join(APIS)}")
    return api, parse_shape(shape)


def modes_for(api: str) -> tuple[bool, ...]:
    """Streaming or not, in the order run: embeddings are never streamed."""
    return (False,) if api == "embeddings" else (False, True)


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"64x16x32"`` → (requests, concurrency, max_tokens)."""
    try:
        requests, concurrency, tokens = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(
            f"load shape {text!r}: write REQUESTSxCONCURRENCYxTOKENS, e.g. 64x16x32"
        ) from None
    return requests, concurrency, tokens


class _Side:
    """One running server of the benchmark: its URL, process and how to stop it."""

    def __init__(self, name: str, url: str, proc: subprocess.Popen, stop: Any):
        self.name, self.url, self.proc, self.stop = name, url, proc, stop


def _start_vllm(argv: list[str], *, env: dict[str, str], workdir: Path) -> _Side:
    port = Ports.free().inference
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            *argv,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--disable-uvicorn-access-log",
        ],
        env=env,
        stdout=(workdir / "vllm.log").open("wb"),
        stderr=subprocess.STDOUT,
        process_group=0,  # not a new session: see tsvllm.host.torchserve.TorchServe.start
    )

    def stop() -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    return _Side("a", f"http://127.0.0.1:{port}/v1", proc, stop)


def _start_torchserve(name: str, cfg: Any, *, workdir: Path) -> _Side:
    from tsvllm.config import dump_model_config
    from tsvllm.host.archive import build_archive

    handler = None
    update: dict[str, Any] = {}
    if name == "c":
        from tsvllm.bench.rag import EXAMPLE_CORPUS
        from tsvllm.host.archive import REPO_ROOT
        from tsvllm.rag.index import build_index

        index = workdir / "rag_index"
        if not (index / "manifest.json").exists():
            build_index(EXAMPLE_CORPUS, index, progress=False, force=True)
        update = {**RAG_GUARDS, "rag": {**RAG_GUARDS["rag"], "index": str(index)}}
        handler = REPO_ROOT / "handlers" / "rag_guard_handler.py"
    elif name == "b0":
        update = {"lean_worker": False}
    staged = cfg.model_copy(
        update={"handler": cfg.handler.model_validate({**cfg.handler.model_dump(), **update})}
    )
    side_dir = workdir / f"side-{name}"
    side_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = dump_model_config(staged, side_dir / "model-config.yaml")
    store = side_dir / "model_store"
    build_archive(cfg_path, name="bench", export_path=store, handler=handler, force=True)
    ts = TorchServe(workdir=side_dir / "ts", model_store=store, models=["bench"], auth="off")
    ts.start()
    return _Side(name, f"{ts.inference_url}/predictions/bench/1.0/v1", ts.process, ts.stop)


def run(
    *,
    model_dir: Path,
    config: Path,
    workdir: Path,
    shapes: list[str],
    rounds: int,
    sides: list[str],
    warmup: int = 1,
    engine: str = "model",
    null_tokens_per_s: float = 0,
    ts_workers: int | None = None,
    progress: Any = print,
) -> dict[str, Any]:
    """Start every side, drive each load shape at each in alternating order, stop all.

    The first ``warmup`` rounds are run the same way but not counted: the first loads after
    a start are slower on every side, most on TorchServe's (its JVM compiles the frontend's
    hot paths), and a served model is warm for all but its first minute (docs/PERFORMANCE.md,
    change 9).
    """
    if "a" not in sides:
        raise ValueError("side a (vLLM's own server) is the reference: keep it in --sides")
    unknown = sorted(set(sides) - set(SIDES))
    if unknown:
        raise ValueError(f"unknown side(s) {', '.join(unknown)}; choose from {', '.join(SIDES)}")
    parsed = {shape: parse_load(shape) for shape in shapes}
    # cold start: the first reply of the API the loads use (a pooling model has no completions)
    embeds_only = all(api == "embeddings" for api, _ in parsed.values())
    probe_api = "embeddings" if embeds_only else "completions"
    cfg, served = bench_config(
        config,
        model_dir=model_dir,
        engine=engine,
        null_tokens_per_s=null_tokens_per_s,
        ts_workers=ts_workers,
    )
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, dict[str, Any]] = {s: {"shapes": {}} for s in sides}
    running: dict[str, _Side] = {}
    try:
        for name in sides:  # one at a time: cold starts are not measured against each other
            progress(f"bench: starting side {name}: {SIDES[name]}")
            start = time.monotonic()
            side = start_side(name, cfg, workdir=workdir)
            running[name] = side
            cold = first_token_s(side.url, served, start=start, proc=side.proc, api=probe_api)
            report[name]["cold_start_s"] = round(cold, 2)

        runs, peaks = _rounds(
            running,
            sides=sides,
            served=served,
            shapes=parsed,
            rounds=rounds,
            warmup=warmup,
            progress=progress,
        )
        for (name, shape, mode), results in runs.items():
            report[name]["shapes"].setdefault(shape, {})[mode] = median_of(results)
        for name in sides:
            report[name]["peak_rss_mb"] = round(peaks[name], 1)
    finally:
        for side in running.values():
            side.stop()
    engine_load: dict[str, Any] = {"engine": engine, "ts_workers": cfg.minWorkers}
    if engine == "null":
        engine_load["null_tokens_per_s"] = null_tokens_per_s
    return _summary(report, shapes=shapes, rounds=rounds, warmup=warmup, engine=engine_load)


#: ``--engine``: what generates the tokens on every side
ENGINES = {
    "model": "the model, run by vLLM",
    "null": "no model: tsvllm.engine.null_executor answers every step at once (or at "
    "--null-tokens-per-s), so only the serving layer is measured",
}


def bench_config(
    config: Path,
    *,
    model_dir: Path,
    engine: str = "model",
    null_tokens_per_s: float = 0,
    ts_workers: int | None = None,
) -> tuple[Any, str]:
    """The model config every side serves, pointed at ``model_dir``, and the served name.

    ``engine="null"`` adds the null engine to the engine args and its rate to the engine's
    environment (:mod:`tsvllm.engine.null_tokens`): both sides get it the same way.
    ``ts_workers`` sets the TorchServe sides' workers (``minWorkers`` and ``maxWorkers``;
    each runs its own engine); vLLM's server (a) keeps its one engine.
    """
    from tsvllm.config import load_model_config
    from tsvllm.engine.null_tokens import EXECUTOR, TOKENS_PER_S_ENV

    if engine not in ENGINES:
        raise ValueError(f"--engine {engine}: choose from {', '.join(ENGINES)}")
    if null_tokens_per_s < 0:
        raise ValueError(f"--null-tokens-per-s {null_tokens_per_s}: use 0 (no wait) or more")
    if null_tokens_per_s and engine != "null":
        raise ValueError("--null-tokens-per-s sets the null engine's rate: add --engine null")
    cfg = load_model_config(config)
    served = (cfg.handler.served_model_name or ["model"])[0]
    update: dict[str, Any] = {"model_path": str(model_dir), "served_model_name": [served]}
    if engine == "null":
        update["vllm_engine_config"] = {
            **cfg.handler.vllm_engine_config,
            "distributed_executor_backend": EXECUTOR,
        }
        update["env"] = {**cfg.handler.env, TOKENS_PER_S_ENV: str(null_tokens_per_s)}
    if ts_workers is not None and ts_workers < 1:
        raise ValueError(f"--ts-workers {ts_workers}: use 1 or more")
    workers = {"minWorkers": ts_workers, "maxWorkers": ts_workers} if ts_workers else {}
    # every side gets the same handler section, pointed at the same model folder
    cfg = cfg.model_copy(update={"handler": cfg.handler.model_copy(update=update), **workers})
    return cfg, served


def start_side(name: str, cfg: Any, *, workdir: Path) -> _Side:
    """Start side ``name``: vLLM's own server for a, else TorchServe."""
    from tsvllm.engine.vllm_engine import handler_argv

    if name == "a":
        env = {**os.environ, **cfg.handler.env}
        return _start_vllm(handler_argv(cfg.handler), env=env, workdir=workdir)
    return _start_torchserve(name, cfg, workdir=workdir)


def _rounds(
    running: dict[str, _Side],
    *,
    sides: list[str],
    served: str,
    shapes: dict[str, tuple[str, tuple[int, int, int]]],
    rounds: int,
    warmup: int,
    progress: Any,
) -> tuple[dict[tuple[str, str, str], list[dict[str, Any]]], dict[str, float]]:
    """Every load shape at every side, non-streaming then streaming, round by round.

    The warm-up rounds come first and are not kept; the side order alternates. Each load's
    result gets the CPU per request of the side's processes (:mod:`tsvllm.bench.usage`).
    Returns the load results per ``(side, shape, mode)`` and each side's peak RSS in MB.
    """
    runs: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    peaks = {s: 0.0 for s in sides}
    for r in range(-warmup, rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        label = "warm-up" if r < 0 else f"round {r + 1}/{rounds}"
        for shape, (api, (requests, concurrency, tokens)) in shapes.items():
            for stream in modes_for(api):
                mode = "stream" if stream else "non_stream"
                for name in order:
                    pid = running[name].proc.pid
                    with usage.PeakRss(pid) as rss, usage.CpuMeter(pid) as cpu:
                        result = load(
                            running[name].url,
                            served,
                            stream=stream,
                            requests=requests,
                            concurrency=concurrency,
                            max_tokens=tokens,
                            api=api,
                        )
                    ok = result.get("requests", requests) - result.get("errors", 0)
                    result.update(
                        usage.cpu_ms_per_request(cpu.used, ok, chunks=result.get("chunks", 0))
                    )
                    peaks[name] = max(peaks[name], rss.peak)
                    if r >= 0:
                        runs.setdefault((name, shape, mode), []).append(result)
                    progress(
                        f"bench: {label} {shape:10s} {mode:10s} side {name:3s}"
                        f"{result['tok_per_s']:9.1f} tok/s  errors {result['errors']}  "
                        f"serving CPU {result.get('cpu_ms_per_req_serving', 0):.2f} ms/req"
                    )
    return runs, peaks


def _summary(
    report: dict[str, dict[str, Any]],
    *,
    shapes: list[str],
    rounds: int,
    warmup: int,
    engine: dict[str, Any],
) -> dict[str, Any]:
    """The whole report: the load, every side's measurements and their ratios to side a."""
    null = " on the null engine" if engine["engine"] == "null" else ""
    return {
        "title": f"{', '.join(shapes)} (requests x concurrency x tokens){null}, "
        f"{rounds} alternating rounds after {warmup} warm-up, medians",
        "load": {"shapes": shapes, "rounds": rounds, "warmup_rounds": warmup, **engine},
        "sides": report,
        "ratios": {
            f"{name}/a": {
                **side_ratios(report["a"], report[name]),
                **{
                    shape: ratios(report["a"]["shapes"][shape], report[name]["shapes"][shape])
                    for shape in shapes
                },
            }
            for name in report
            if name != "a"
        },
    }


def render(report: dict[str, Any]) -> str:
    """A plain table: one line per side, shape and mode; then the ratios. ``srv ms/req``:
    CPU ms per request of the serving processes (frontend + server), ``eng ms/req``: of
    vLLM's engine processes (:mod:`tsvllm.bench.usage`), ``srv ms/chk``: serving CPU ms per
    streamed chunk."""
    lines = [
        f"{'side':4s} {'shape':20s} {'mode':10s} {'tok/s':>9s} {'req/s':>7s} "
        f"{'TTFT p50':>9s} {'TTFT p99':>9s} {'ITL p50':>8s} {'lat p50':>8s} "
        f"{'lat p99':>8s} {'srv ms/req':>10s} {'eng ms/req':>10s} {'srv ms/chk':>10s}"
    ]

    def cell(value: float | None, width: int, digits: int) -> str:
        return f"{'-' if value is None else f'{value:.{digits}f}':>{width}s}"

    for name, side in report["sides"].items():
        for shape, modes in side["shapes"].items():
            for mode, m in modes.items():
                lines.append(
                    f"{name:4s} {shape:20s} {mode:10s} {m['tok_per_s']:9.1f} {m['req_per_s']:7.2f} "
                    f"{cell(m.get('ttft_p50_ms'), 9, 1)} {cell(m.get('ttft_p99_ms'), 9, 1)} "
                    f"{cell(m.get('itl_p50_ms'), 8, 2)} "
                    f"{m['latency_p50_ms']:8.1f} {m['latency_p99_ms']:8.1f} "
                    f"{cell(m.get('cpu_ms_per_req_serving'), 10, 2)} "
                    f"{cell(m.get('cpu_ms_per_req_engine'), 10, 2)} "
                    f"{cell(m.get('cpu_ms_per_chunk_serving'), 10, 3)}"
                )
        lines.append(
            f"{name:4s} cold start {side['cold_start_s']} s, peak RSS {side['peak_rss_mb']:.0f} MB"
        )
    for pair, values in report["ratios"].items():
        lines.append(f"{pair}: {json.dumps(values)}")
    return "\n".join(lines)


def main(
    *,
    model_dir: str,
    config: str,
    workdir: str,
    shapes: list[str],
    rounds: int,
    warmup: int,
    sides: list[str],
    json_path: str | None,
    plot_path: str | None,
    engine: str = "model",
    null_tokens_per_s: float = 0,
    ts_workers: int | None = None,
) -> int:
    if plot_path:  # before the run: never a failure after a long one
        check_plot(Path(plot_path))
    report = run(
        model_dir=Path(model_dir).resolve(),
        config=Path(config),
        workdir=Path(workdir).resolve(),
        shapes=shapes,
        rounds=rounds,
        warmup=warmup,
        sides=sides,
        engine=engine,
        null_tokens_per_s=null_tokens_per_s,
        ts_workers=ts_workers,
    )
    print(render(report))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2))
    if plot_path:
        plot(report, Path(plot_path))
    return 0
