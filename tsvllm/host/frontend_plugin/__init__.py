"""tsvllm's TorchServe frontend plugin: a truthful ``/ping``, ``/alive`` for liveness
probes, worker restarts that work, a 503 at once for a request to a model with no READY
worker (TorchServe leaves it waiting in its queue), non-streamed requests forgotten once
answered (TorchServe keeps every one in memory), word to the worker when a request's
client has gone (TorchServe never tells it), and an OpenAI 413 for a body over
``max_request_size`` (TorchServe's has no body).

The plugin is a small jar built from the Java sources next to this file (``ReadyPing``,
``Alive``, ``Sweeper``, ``RestartFix``, ``JobRelease``, ``QueueGuard``, ``ClientWatch``,
``BodyLimit``;
docs/TORCHSERVE.md says what each fixes in TorchServe 0.12). TorchServe loads it from its
``plugins_path``: ``tsvllm launch``, the container entrypoint and the quick start set it; with a
plain ``torchserve --start`` add ``--plugins-path "$(python -m tsvllm.host.frontend_plugin)"``.
``ClientWatch`` needs ``TSVLLM_CONTROL_DIR`` (set by ``tsvllm launch`` and the container).

The jar is shipped prebuilt (a JRE is all TorchServe needs; building takes a JDK):
``python -m tsvllm.host.frontend_plugin --build`` rebuilds it after a change to the sources,
byte for byte the same on the same JDK.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

#: the jar TorchServe loads; the directory that holds it is the ``plugins_path``
JAR_NAME = "tsvllm-frontend.jar"
SOURCES = (
    "ReadyPing.java",
    "Alive.java",
    "Sweeper.java",
    "RestartFix.java",
    "JobRelease.java",
    "QueueGuard.java",
    "ClientWatch.java",
    "BodyLimit.java",
    "Workers.java",
)
#: what ServiceLoader reads to find the endpoints (TorchServe's PluginsManager)
SERVICE = "META-INF/services/org.pytorch.serve.servingsdk.ModelServerEndpoint"
ENDPOINT_CLASSES = ("org.tsvllm.frontend.ReadyPing", "org.tsvllm.frontend.Alive")
#: a fixed time for every jar entry, so that the same classes make the same jar
_EPOCH = (2025, 1, 1, 0, 0, 0)


def plugin_dir() -> Path:
    """The directory to pass as TorchServe's ``plugins_path``."""
    return Path(__file__).resolve().parent


def jar_path() -> Path:
    return plugin_dir() / JAR_NAME


def frontend_jar() -> Path:
    """TorchServe's own ``model-server.jar`` (the plugin compiles against it)."""
    import ts

    return Path(ts.__file__).resolve().parent / "frontend" / "model-server.jar"


def compile_classes(*, javac: str = "javac") -> dict[str, bytes]:
    """The plugin's classes, compiled from the sources here: ``{path in jar: bytes}``."""
    if shutil.which(javac) is None:
        raise RuntimeError(f"{javac} not found: building the plugin needs a JDK (17 or newer)")
    with tempfile.TemporaryDirectory() as out:
        sources = [str(plugin_dir() / name) for name in SOURCES]
        argv = [javac, "--release", "17", "-cp", str(frontend_jar()), "-d", out, *sources]
        subprocess.run(argv, check=True)
        root = Path(out)
        return {
            path.relative_to(root).as_posix(): path.read_bytes()
            for path in sorted(root.rglob("*.class"))
        }


def jar_bytes(classes: dict[str, bytes]) -> bytes:
    """A jar of ``classes`` plus the service entry, with fixed timestamps."""
    buffer = io.BytesIO()
    entries = {
        "META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\r\n\r\n",
        SERVICE: "".join(f"{name}\n" for name in ENDPOINT_CLASSES).encode(),
        **classes,
    }
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as jar:
        for name, data in entries.items():
            jar.writestr(zipfile.ZipInfo(name, date_time=_EPOCH), data, zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--build"]:
        jar_path().write_bytes(jar_bytes(compile_classes()))
        print(jar_path())
        return 0
    if args:
        print("usage: python -m tsvllm.host.frontend_plugin [--build]", file=sys.stderr)
        return 2
    print(plugin_dir())
    return 0
