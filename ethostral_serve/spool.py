"""The spool: uploads of queued jobs, kept on disk until their job ends.

One file per job (``<job id>.upload``) in one directory. A disk quota bounds what the
spool holds; an upload that would pass it is refused (503) and nothing of it is kept.
Files are written under a temporary name and renamed, so a crash never leaves a job
pointing at half an upload.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import BinaryIO

from ethostral_serve.errors import EthostralError

CHUNK = 1 << 20
SUFFIX = ".upload"
SWEEP_MIN_AGE_S = 600.0  # a spooled file younger than this may belong to a job being made


class SpoolFullError(EthostralError):
    """The spool's disk quota would be passed: the server is busy, try again later."""

    status_code = 503


class Spool:
    """A directory of spooled uploads with a byte quota."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.directory = directory
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._reserved = 0  # bytes of uploads being written now

    def path(self, job_id: str) -> Path:
        """Where a job's upload is kept."""
        return self.directory / f"{job_id}{SUFFIX}"

    def used_bytes(self) -> int:
        """Bytes the spool's files hold."""
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.directory):
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat().st_size
        return total

    def save(self, job_id: str, source: BinaryIO) -> Path:
        """Copy an upload into the spool (blocking: call it from a worker thread).

        Raises :class:`SpoolFullError` when it would pass the quota; nothing is kept then.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.path(job_id)
        partial = final.with_suffix(".partial")
        try:
            with partial.open("wb") as out:
                while chunk := source.read(CHUNK):
                    self._reserve(len(chunk))
                    try:
                        out.write(chunk)
                        out.flush()  # on disk now: used_bytes counts it
                    finally:
                        with self._lock:
                            self._reserved -= len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, final)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        return final

    def _reserve(self, n: int) -> None:
        # Files on disk (partial ones of concurrent uploads too) plus chunks being written.
        with self._lock:
            if self.used_bytes() + self._reserved + n > self.max_bytes:
                raise SpoolFullError(
                    f"the server's spool for queued uploads is full ({self.max_bytes / 1e9:g} "
                    "GB, ETHOSTRAL_JOBS__SPOOL_MAX_GB); try again later"
                )
            self._reserved += n

    def holds(self, path: str | Path) -> bool:
        """Whether ``path`` is in this spool (a job's upload may be in another host's)."""
        return Path(path).parent == self.directory

    def delete(self, job_id: str) -> None:
        """Remove a job's upload (nothing when it is gone already)."""
        self.path(job_id).unlink(missing_ok=True)

    def job_ids(self) -> set[str]:
        """Ids of the jobs whose uploads are in the spool."""
        with contextlib.suppress(FileNotFoundError):
            return {p.name[: -len(SUFFIX)] for p in self.directory.glob(f"*{SUFFIX}")}
        return set()

    def sweep(self, keep: set[str], min_age_s: float = SWEEP_MIN_AGE_S) -> list[str]:
        """Delete uploads of jobs not in ``keep`` (their job ended, or never was made)
        untouched for ``min_age_s``, so an upload being queued right now stays; returns
        the job ids whose uploads were deleted."""
        cutoff = time.time() - min_age_s
        gone = []
        for pattern in (f"*{SUFFIX}", "*.partial"):
            for path in sorted(self.directory.glob(pattern)):
                job_id = path.name.split(".", 1)[0]
                with contextlib.suppress(FileNotFoundError):
                    if job_id not in keep and path.stat().st_mtime < cutoff:
                        path.unlink()
                        gone.append(job_id)
        return gone
