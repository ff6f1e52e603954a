"""A GCS emulator on loopback (gcp-storage-emulator, with the real google-cloud-storage
client) holding the tiny model under ``gs://models/tiny``, as Vertex AI's artifact copy."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.launched import free_port_block


@contextlib.contextmanager
def serving(model: Path) -> Iterator[int]:
    """The emulator's port, ``model``'s files uploaded; stopped on exit."""
    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    port = free_port_block(1)
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="models")
    server.start()
    try:
        with pytest.MonkeyPatch.context() as mp:  # restores any value it had before
            mp.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")  # read at build
            client = storage.Client(project="test", credentials=AnonymousCredentials())
            bucket = client.bucket("models")
            for path in sorted(p for p in Path(model).rglob("*") if p.is_file()):
                bucket.blob(f"tiny/{path.relative_to(model)}").upload_from_filename(str(path))
        yield port
    finally:
        server.stop()
