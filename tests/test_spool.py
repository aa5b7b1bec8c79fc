"""The spool: uploads copied to disk under a byte quota, deleted and swept."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest

from ethostral_serve.spool import CHUNK, SUFFIX, Spool, SpoolFullError

OLD_S = 3600.0  # an age well past the sweep's threshold below
MIN_AGE_S = 600.0


def payload(n: int) -> bytes:
    """``n`` deterministic bytes, every byte value represented."""
    return (bytes(range(256)) * (n // 256 + 1))[:n]


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def age(path: Path, seconds: float) -> None:
    """Set ``path``'s mtime ``seconds`` into the past."""
    then = time.time() - seconds
    os.utime(path, (then, then))


class SmallReads(io.RawIOBase):
    """A source that hands out at most ``step`` bytes per read (like a slow socket)."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data = data
        self.step = step
        self.offset = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        n = self.step if size < 0 else min(size, self.step)
        chunk = self.data[self.offset : self.offset + n]
        self.offset += len(chunk)
        return chunk


class BreaksMidway(io.RawIOBase):
    """A source that gives one chunk and then fails (a client that went away)."""

    def __init__(self, first: bytes) -> None:
        self.first: bytes | None = first

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.first is not None:
            chunk, self.first = self.first, None
            return chunk
        raise ConnectionResetError("client went away")


def test_max_bytes_must_be_positive(tmp_path: Path) -> None:
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_bytes"):
            Spool(tmp_path, bad)


def test_save_copies_bytes_exactly_and_creates_the_directory(tmp_path: Path) -> None:
    directory = tmp_path / "not" / "yet" / "here"
    spool = Spool(directory, max_bytes=10 * CHUNK)
    data = payload(2 * CHUNK + 12345)  # several chunks and a ragged end

    path = spool.save("job-1", io.BytesIO(data))

    assert path == directory / f"job-1{SUFFIX}" == spool.path("job-1")
    assert path.read_bytes() == data
    assert files_in(directory) == [f"job-1{SUFFIX}"]
    assert spool.used_bytes() == len(data)


def test_save_of_an_empty_upload_keeps_an_empty_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1)
    path = spool.save("empty", io.BytesIO(b""))
    assert path.read_bytes() == b""
    assert files_in(tmp_path) == [f"empty{SUFFIX}"]


def test_an_upload_of_exactly_the_quota_fits(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    assert spool.save("j", io.BytesIO(payload(1000))).stat().st_size == 1000


def test_save_past_the_quota_raises_and_keeps_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1000)
    with pytest.raises(SpoolFullError) as caught:
        spool.save("big", io.BytesIO(payload(1001)))
    assert caught.value.status_code == 503
    assert "spool" in caught.value.detail
    assert files_in(tmp_path / "spool") == []
    assert spool.job_ids() == set()


def test_save_past_the_quota_after_some_chunks_keeps_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=CHUNK + 10)
    with pytest.raises(SpoolFullError):
        spool.save("big", io.BytesIO(payload(2 * CHUNK)))  # the first chunk fits
    assert files_in(tmp_path) == []


def test_quota_counts_bytes_written_from_small_reads(tmp_path: Path) -> None:
    # A source handing out a few bytes at a time: what this upload has written so far
    # must count, not only what happens to have reached the disk.
    spool = Spool(tmp_path, max_bytes=100)
    with pytest.raises(SpoolFullError):
        spool.save("trickle", SmallReads(payload(500), step=7))
    assert files_in(tmp_path) == []
    assert spool.save("fits", SmallReads(payload(100), step=7)).read_bytes() == payload(100)


def test_quota_counts_files_already_in_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    first = spool.save("first", io.BytesIO(payload(600)))

    with pytest.raises(SpoolFullError):
        spool.save("second", io.BytesIO(payload(401)))
    assert files_in(tmp_path) == [f"first{SUFFIX}"]
    assert first.read_bytes() == payload(600)

    assert spool.save("third", io.BytesIO(payload(400))).stat().st_size == 400
    spool.delete("first")
    assert spool.save("second", io.BytesIO(payload(600))).stat().st_size == 600


def test_quota_counts_leftover_partials_too(tmp_path: Path) -> None:
    (tmp_path / "crashed.partial").write_bytes(payload(900))
    spool = Spool(tmp_path, max_bytes=1000)
    with pytest.raises(SpoolFullError):
        spool.save("next", io.BytesIO(payload(200)))
    assert files_in(tmp_path) == ["crashed.partial"]


def test_a_source_that_fails_mid_read_leaves_no_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10 * CHUNK)
    with pytest.raises(ConnectionResetError):
        spool.save("broken", BreaksMidway(payload(CHUNK)))
    assert files_in(tmp_path) == []
    assert spool.job_ids() == set()


def test_a_failed_resave_keeps_no_partial_and_leaves_others_alone(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10 * CHUNK)
    spool.save("other", io.BytesIO(b"keep me"))
    with pytest.raises(ConnectionResetError):
        spool.save("broken", BreaksMidway(b"abc"))
    assert files_in(tmp_path) == [f"other{SUFFIX}"]
    assert spool.path("other").read_bytes() == b"keep me"


def test_delete_is_idempotent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1000)
    spool.delete("never-saved")  # no directory yet
    spool.save("a", io.BytesIO(b"x"))
    spool.save("b", io.BytesIO(b"y"))
    spool.delete("a")
    spool.delete("a")
    assert files_in(tmp_path / "spool") == [f"b{SUFFIX}"]


def test_job_ids_lists_saved_jobs(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1000)
    assert spool.job_ids() == set()  # no directory yet
    for job_id in ("a", "b", "c"):
        spool.save(job_id, io.BytesIO(job_id.encode()))
    (tmp_path / "spool" / "d.partial").write_bytes(b"half")  # not a saved job
    assert spool.job_ids() == {"a", "b", "c"}
    spool.delete("b")
    assert spool.job_ids() == {"a", "c"}


def test_sweep_deletes_old_uploads_not_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000)
    for job_id in ("old-1", "old-2", "old-kept", "young", "young-kept"):
        spool.save(job_id, io.BytesIO(job_id.encode()))
    for job_id in ("old-1", "old-2", "old-kept"):
        age(spool.path(job_id), OLD_S)
    stray = tmp_path / "crashed.partial"
    stray.write_bytes(b"half an upload")
    age(stray, OLD_S)
    fresh_partial = tmp_path / "writing.partial"
    fresh_partial.write_bytes(b"being written")

    gone = spool.sweep(keep={"old-kept", "young-kept"}, min_age_s=MIN_AGE_S)

    assert sorted(gone) == ["crashed", "old-1", "old-2"]
    assert spool.job_ids() == {"old-kept", "young", "young-kept"}
    assert files_in(tmp_path) == sorted(
        [f"old-kept{SUFFIX}", f"young{SUFFIX}", f"young-kept{SUFFIX}", "writing.partial"]
    )


def test_sweep_keeps_a_kept_partial(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=10_000)
    partial = tmp_path / "running.partial"
    partial.write_bytes(b"half")
    age(partial, OLD_S)
    assert spool.sweep(keep={"running"}, min_age_s=MIN_AGE_S) == []
    assert files_in(tmp_path) == ["running.partial"]


def test_sweep_with_nothing_to_do(tmp_path: Path) -> None:
    assert Spool(tmp_path / "missing", max_bytes=1).sweep(keep=set()) == []
    spool = Spool(tmp_path / "spool", max_bytes=1000)
    spool.save("young", io.BytesIO(b"x"))
    assert spool.sweep(keep=set(), min_age_s=MIN_AGE_S) == []
    assert spool.job_ids() == {"young"}
    assert spool.sweep(keep=set(), min_age_s=MIN_AGE_S) == []
