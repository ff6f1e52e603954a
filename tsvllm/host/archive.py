"""Build TorchServe model artifacts (``no-archive``, ``mar``, ``tgz``) from a model config.

Uses torch-model-archiver's Python API. The config is validated first; the model
weights are referenced by absolute path (not copied) unless ``include_weights`` is set,
in which case the model folder is packed into the artifact and referenced relative to
the archive's ``model_dir``.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from tsvllm.config import ModelConfig, dump_model_config, load_model_config

logger = logging.getLogger(__name__)

Format = Literal["no-archive", "mar", "tgz"]
#: our format names → torch-model-archiver's, and the artifact each leaves in export_path
_FORMATS: dict[str, tuple[str, str]] = {
    "no-archive": ("no-archive", "{name}"),
    "mar": ("default", "{name}.mar"),
    "tgz": ("tgz", "{name}.tar.gz"),
}
#: the repository checkout this package runs from (examples/ lives there); not part of an
#: installed package
REPO_ROOT = Path(__file__).resolve().parents[2]
#: where the handler entry files sit inside an installed tsvllm: setup.py maps the package
#: ``tsvllm.handler_files`` onto the repository's handlers/ folder (no second copy in git)
HANDLER_FILES = "handler_files"


def handler_file(name: str) -> Path:
    """A handler entry file shipped with tsvllm, e.g. ``vllm_handler.py``.

    A (non-editable) install holds it in the package (importlib.resources finds it there);
    an editable install or a bare checkout runs from the repository, whose ``handlers/``
    folder holds it. (setuptools' editable finder cannot import a namespace subpackage
    mapped elsewhere, so ``tsvllm.handler_files`` is not imported.) The path may not exist
    (:func:`build_archive` says so).
    """
    from importlib.resources import files

    shipped = files("tsvllm").joinpath(HANDLER_FILES, name)
    if shipped.is_file():
        return Path(str(shipped))
    return REPO_ROOT / "handlers" / name


DEFAULT_HANDLER = handler_file("vllm_handler.py")
#: a Hugging Face hub id (org/name): vLLM downloads it when the engine starts
HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: folder name of the RAG index inside an artifact
RAG_INDEX_NAME = "rag_index"


class ArchiveError(Exception):
    """The artifact cannot be built (message says why and what to do)."""


def artifact_path(*, name: str, export_path: Path, fmt: Format) -> Path:
    return Path(export_path) / _FORMATS[fmt][1].format(name=name)


def build_archive(
    config_path: str | Path,
    *,
    name: str,
    version: str = "1.0",
    fmt: Format = "no-archive",
    export_path: str | Path = "model_store",
    handler: str | Path | None = None,
    extra_files: list[str | Path] | None = None,
    include_weights: bool = False,
    force: bool = False,
) -> Path:
    """Validate ``config_path`` and build the artifact; return its path."""
    if fmt not in _FORMATS:
        raise ArchiveError(f"unknown format {fmt!r}; use one of {', '.join(_FORMATS)}")
    cfg = load_model_config(config_path)
    export = Path(export_path).resolve()
    target = artifact_path(name=name, export_path=export, fmt=fmt)
    if target.exists() and not force:
        raise ArchiveError(f"{target} already exists; pass --force to overwrite it")
    handler_file = _handler_file(handler)
    model_dir, hub_id = _model_dir(cfg, include_weights=include_weights)
    extras = _extra_files(extra_files)
    index_dir = _index_dir(cfg)

    with tempfile.TemporaryDirectory(prefix="tsvllm-archive-") as tmp:
        staged = _stage_config(
            cfg,
            model_path=cfg.handler.model_path if hub_id else str(model_dir),
            include_weights=include_weights,
            index_dir=index_dir,
        )
        staged_path = Path(tmp) / "model-config.yaml"
        dump_model_config(staged, staged_path)
        pack = _pack_folders(
            Path(tmp) / "pack",
            model_dir=model_dir if include_weights else None,
            index_dir=index_dir,
        )
        if pack is not None:
            extras.append(pack)
        export.mkdir(parents=True, exist_ok=True)
        if force and target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        _run_archiver(
            name=name,
            handler_file=handler_file,
            version=version,
            extras=extras,
            export=export,
            fmt=fmt,
            force=force,
            config_file=staged_path,
        )
    logger.info("built %s", target)
    return target


def _handler_file(handler: str | Path | None) -> Path:
    """The handler entry file: the one given, else :data:`DEFAULT_HANDLER`."""
    if handler:
        handler_file = Path(handler)
        if not handler_file.is_file():
            raise ArchiveError(f"handler file {handler_file} does not exist")
        return handler_file
    if not DEFAULT_HANDLER.is_file():
        raise ArchiveError(
            f"the default handler {DEFAULT_HANDLER} is missing from this tsvllm install; "
            "reinstall tsvllm (pip install tsvllm) or pass --handler handlers/vllm_handler.py"
        )
    return DEFAULT_HANDLER


def _model_dir(cfg: ModelConfig, *, include_weights: bool) -> tuple[Path, bool]:
    """``(model folder, whether handler.model_path is a hub id)``; checks the folder."""
    model_dir = Path(cfg.handler.model_path).expanduser()
    if not model_dir.is_absolute():
        model_dir = Path.cwd() / model_dir
    hub_id = not model_dir.exists() and HF_ID.match(cfg.handler.model_path) is not None
    if hub_id and include_weights:
        raise ArchiveError(
            f"--include-weights needs a local model folder, not the hub id {cfg.handler.model_path}"
        )
    if not hub_id and not (model_dir / "config.json").is_file():
        raise ArchiveError(
            f"no model at {model_dir} (no config.json); build one with "
            "`tsvllm demo-model tiny|smollm2 --out DIR` or fix handler.model_path"
        )
    return model_dir, hub_id


def _extra_files(extra_files: list[str | Path] | None) -> list[Path]:
    extras = [Path(p).resolve() for p in extra_files or []]
    for extra in extras:
        if not extra.exists():
            raise ArchiveError(f"extra file {extra} does not exist")
    return extras


def _pack_folders(pack: Path, *, model_dir: Path | None, index_dir: Path | None) -> Path | None:
    """Copy the folders to pack under ``pack`` (the archiver copies a folder's *contents*:
    each packed folder is wrapped once more); ``None`` when there is nothing to pack."""
    if model_dir is not None:
        shutil.copytree(model_dir, pack / model_dir.name)
    if index_dir is not None:
        shutil.copytree(index_dir, pack / RAG_INDEX_NAME)
    return pack if pack.exists() else None


def _run_archiver(
    *,
    name: str,
    handler_file: Path,
    version: str,
    extras: list[Path],
    export: Path,
    fmt: Format,
    force: bool,
    config_file: Path,
) -> None:
    """torch-model-archiver's Python API; its errors become :class:`ArchiveError`."""
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_archiver_error import ModelArchiverError
    from model_archiver.model_packaging import generate_model_archive

    archiver_config = ModelArchiverConfig(
        model_name=name,
        handler=str(handler_file.resolve()),
        version=version,
        extra_files=",".join(str(e) for e in extras) or None,
        export_path=str(export),
        archive_format=_FORMATS[fmt][0],
        force=force,
        config_file=str(config_file),
    )
    try:
        generate_model_archive(archiver_config)
    except ModelArchiverError as exc:
        raise ArchiveError(str(exc)) from exc


def _index_dir(cfg: ModelConfig) -> Path | None:
    """The RAG index folder the config names (it is always packed: it is small)."""
    if cfg.handler.rag is None:
        return None
    index = Path(cfg.handler.rag.index).expanduser()
    if not index.is_absolute():
        index = Path.cwd() / index
    if not (index / "manifest.json").is_file():
        raise ArchiveError(
            f"no RAG index at {index} (no manifest.json); build one with "
            "`tsvllm index CORPUS_DIR --out INDEX_DIR` or fix handler.rag.index"
        )
    return index


def _stage_config(
    cfg: ModelConfig, *, model_path: str, include_weights: bool, index_dir: Path | None
) -> ModelConfig:
    """The config as packed: paths absolute, or relative to the archive for packed folders."""
    update: dict = {"model_path": Path(model_path).name if include_weights else model_path}
    if index_dir is not None:
        update["rag"] = cfg.handler.rag.model_copy(update={"index": RAG_INDEX_NAME})
    handler = cfg.handler.model_copy(update=update)
    return cfg.model_copy(update={"handler": handler})
