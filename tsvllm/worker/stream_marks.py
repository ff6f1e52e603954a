"""Streams already started, shared by the workers of one host: no stream is spliced.

When TorchServe removes a worker (a scale-down) it puts that worker's requests in flight
back at the head of the model's queue, and another worker receives the *same* request
(same TorchServe request id). For a stream whose first chunks already reached the client,
that worker's new generation would be appended to the same HTTP response: two
generations in one stream. So each worker marks a stream as started, with one file per
request id, created (exclusively) right before the stream's first chunk goes out and
removed when the stream ends; a worker handed a stream whose mark exists refuses it
(an error event and ``[DONE]``, the engine is not asked). Requests that are not streamed
have no mark: the client has received nothing, so TorchServe may run them again.

The marks live in ``<TSVLLM_CONTROL_DIR>/streams`` (:mod:`tsvllm.drain`), else in a
private folder of the user under the temp dir. A worker that is killed leaves its marks:
each worker removes marks older than ``stale_after_s`` when it starts and then at most
every ``stale_after_s / 4``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from tsvllm import drain

logger = logging.getLogger(__name__)

#: the least age of a mark that counts as stale (a mark lives as long as its stream)
MIN_STALE_S = 3600.0
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


class StreamMarks:
    """The started-stream marks in ``directory`` (made 0700 if missing)."""

    def __init__(self, directory: Path, *, stale_after_s: float = MIN_STALE_S):
        self.directory = directory
        self.stale_after_s = stale_after_s
        self._next_sweep = 0.0

    @classmethod
    def for_environ(cls, environ: Mapping[str, str], *, stale_after_s: float) -> StreamMarks:
        """The marks of this host's server: under ``TSVLLM_CONTROL_DIR``, else in the
        user's private folder under the temp dir. Raises OSError when that folder exists
        but is not the user's own and private (another user could plant marks there)."""
        control = drain.control_dir(environ)
        if control is not None:
            directory = control / "streams"
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        else:
            directory = Path(tempfile.gettempdir()) / f"tsvllm-streams-{os.getuid()}"
            directory.mkdir(mode=0o700, exist_ok=True)
            info = directory.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
                raise OSError(f"{directory} is not a private folder of this user")
        marks = cls(directory, stale_after_s=max(stale_after_s, MIN_STALE_S))
        marks.sweep()
        return marks

    def _path(self, request_id: str) -> Path:
        name = request_id if _SAFE_ID.fullmatch(request_id) else None
        if name is None:  # a file name from any id, never a path
            name = hashlib.sha256(request_id.encode()).hexdigest()
        return self.directory / name

    def started(self, request_id: str) -> bool:
        """True when a worker already sent chunks of this request's stream (one ``stat``)."""
        return self._path(request_id).exists()

    def claim(self, request_id: str) -> None:
        """Mark the stream started: call right before its first chunk goes out.

        A mark that exists already stays (a worker that was being removed marked it after
        its connection to the frontend closed: nothing of it reached the client)."""
        try:
            fd = os.open(self._path(request_id), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            logger.info("stream %s: already marked started by a removed worker", request_id)
        except OSError:  # never fails the stream: it is only not protected
            logger.exception("stream %s: cannot mark it started in %s", request_id, self.directory)
        else:
            os.close(fd)
        if time.monotonic() >= self._next_sweep:
            self.sweep()

    def release(self, request_id: str) -> None:
        """The stream ended here: its request will not be handed to another worker."""
        try:
            self._path(request_id).unlink(missing_ok=True)
        except OSError:  # the sweep removes it later
            logger.exception("stream %s: cannot remove its mark", request_id)

    def sweep(self) -> int:
        """Remove the marks older than ``stale_after_s`` (left by killed workers); returns
        how many. Never raises: a mark that cannot be removed is only logged."""
        self._next_sweep = time.monotonic() + self.stale_after_s / 4
        oldest = time.time() - self.stale_after_s
        removed = 0
        try:
            entries = list(os.scandir(self.directory))
        except OSError:
            logger.exception("stream marks: cannot list %s", self.directory)
            return 0
        for entry in entries:
            try:
                if entry.stat(follow_symlinks=False).st_mtime < oldest:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                continue
            except OSError:
                logger.exception("stream marks: cannot remove %s", entry.path)
        return removed


def open_marks(environ: Mapping[str, str], *, stale_after_s: float) -> StreamMarks | None:
    """:meth:`StreamMarks.for_environ`, or None (logged) when its folder is unusable: the
    worker then serves without the check, as before it existed."""
    try:
        return StreamMarks.for_environ(environ, stale_after_s=stale_after_s)
    except OSError as exc:
        logger.warning(
            "tsvllm: no stream marks (%s): a stream TorchServe hands to this worker after "
            "another worker was removed mid-stream is not refused",
            exc,
        )
        return None
