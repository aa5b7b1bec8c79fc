"""Kill the whole service mid-job, start it again: the job completes after the restart.

    .venv/bin/python -m benchmarks.job_restart [--minutes 3] [--kill-at 0.3]
        [--workdir /tmp/ethostral-restart]

Starts ``ethostral serve`` itself (sessions in the embedded Redis and the spool under
``--workdir``), uploads ``--minutes`` of LibriSpeech speech with ``async=true`` and
follows its events. Once the job's progress passes ``--kill-at``, every process of the
service is killed with SIGKILL at once (``ethostral serve``, ``serve run``, Ray, the
replicas and the embedded ``redis-server``): nothing shuts down cleanly. Then it starts
``ethostral serve`` again over the same directories and follows the same job to its end.

Prints the timeline (upload, kill, service back, job done), the job's attempts, how many
``done`` events it had (exactly one: it completed once) and the session's WER. Exits
non-zero unless the job completed with its session stored. Needs port 8000 free (no other
service running).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.common import machine, print_table, wer_counts
from benchmarks.long_job import build
from benchmarks.serve_upload import wav_bytes
from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.client import Client


class ServiceProcess:
    """``ethostral serve`` on this machine, in its own session, with its own data."""

    def __init__(self, workdir: Path, config: str = "serve_config.yaml") -> None:
        self.workdir = workdir
        self.config = config
        self.url = "http://127.0.0.1:8000"  # where serve_config.yaml listens
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 300.0) -> float:
        """Start it; returns seconds until ``/healthz`` answered 200."""
        env = {
            **os.environ,
            "ETHOSTRAL_REDIS__DATA_DIR": str(self.workdir / "redis"),
            "ETHOSTRAL_JOBS__SPOOL_DIR": str(self.workdir / "spool"),
            "RAY_AUTH_MODE": "disabled",
        }
        log = (self.workdir / "serve.log").open("ab")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ethostral_serve.cli", "serve", self.config],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.monotonic() - t0 < timeout_s:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"ethostral serve exited; see {self.workdir / 'serve.log'}")
            time.sleep(1.0)
        raise SystemExit("the service did not become healthy")

    def kill(self) -> int:
        """SIGKILL every process of the service at once; returns how many."""
        assert self.proc is not None
        root = psutil.Process(self.proc.pid)
        procs = [root, *root.children(recursive=True)]
        redis_dir = str(self.workdir / "redis")
        procs += [
            p
            for p in psutil.process_iter(["cmdline"])
            if redis_dir in " ".join(p.info["cmdline"] or []) and p not in procs
        ]
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        psutil.wait_procs(procs, timeout=10)
        self.proc.wait(timeout=10)
        return len(procs)

    def stop(self) -> None:
        """Stop it cleanly (SIGTERM to ``ethostral serve``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--kill-at", type=float, default=0.3, help="progress at which to kill")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ethostral-restart"))
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    samples, refs, _ = build(args.minutes)
    audio = args.workdir / "restart.wav"
    audio.write_bytes(wav_bytes(samples))
    service = ServiceProcess(args.workdir)
    rows: list[list[object]] = []
    up_s = service.start()
    rows.append(["service up (first start)", f"{up_s:.1f}"])
    try:
        with Client(service.url, timeout_s=600) as client:
            t0 = time.monotonic()
            job = client.submit(audio, language="en")
            rows.append(["202 for the upload", f"{time.monotonic() - t0:.2f}"])
            for state in client.job_events(job.id):
                if state.status == "running" and state.progress >= args.kill_at:
                    at = f"kill at {state.stage} {state.progress:.0%}"
                    rows.append([at, f"{time.monotonic() - t0:.1f}"])
                    break
                if state.status in ("done", "failed"):
                    raise SystemExit(f"the job ended ({state.status}) before the kill")
        killed = service.kill()
        rows.append([f"killed {killed} processes", f"{time.monotonic() - t0:.1f}"])
        up_s = service.start()
        rows.append(["service up again", f"{time.monotonic() - t0:.1f}"])
        with Client(service.url, timeout_s=600) as client:
            states = list(client.job_events(job.id))
            final = states[-1]
            rows.append([f"job {final.status}", f"{time.monotonic() - t0:.1f}"])
            if final.status != "done":
                raise SystemExit(f"the job ended {final.status}: {final.detail}")
            session = client.get(job.id)
        wer, words = wer_counts([" ".join(refs)], [" ".join(s.text for s in session.segments)])
    finally:
        service.stop()
    done_events = sum(1 for s in states if s.status == "done")
    print(f"{machine()}; {samples.size / SAMPLE_RATE / 60:.1f} min of audio")
    print_table(["step", "seconds since upload"], rows)
    print()
    print_table(
        ["job", "attempts", "done events", "segments", "words", "WER %"],
        [[job.id, final.attempts, done_events, len(session.segments), words, f"{100 * wer:.2f}"]],
    )
    if done_events != 1:
        raise SystemExit("the job completed more than once")


if __name__ == "__main__":
    main()
