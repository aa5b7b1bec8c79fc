"""Find the service's processes on this machine: Serve replicas by their Ray titles, and
the embedded ``redis-server`` by its data directory (for fault runs and memory samples)."""

from __future__ import annotations

from pathlib import Path

import psutil


def replica_pids(deployment: str, app: str | None = None) -> list[int]:
    """PIDs of a deployment's replicas (Ray titles them ``ServeReplica:<app>:<name>``)."""
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        name = _replica_name(" ".join(p.info["cmdline"] or []))
        if name is not None and name[1] == deployment and app in (None, name[0]):
            pids.append(p.pid)
    return pids


def _replica_name(title: str) -> tuple[str, str] | None:
    """(app, deployment) of a replica's process title, else None."""
    if "ServeReplica:" not in title:
        return None
    # "ServeReplica:<app>:<deployment>", with ".<method>" appended while it serves a call
    name = title.split("ServeReplica:", 1)[1].split()[0]
    app, _, deployment = name.rpartition(":")
    return app, deployment.split(".", 1)[0]


def serve_roles() -> dict[str, int]:
    """One PID per Serve role on this machine: each deployment's first replica, the
    proxy and the controller."""
    found: dict[str, int] = {}
    for p in psutil.process_iter(["cmdline"]):
        title = " ".join(p.info["cmdline"] or [])
        name = _replica_name(title)
        if name is not None:
            role = name[1]
        elif "ProxyActor" in title:
            role = "proxy"
        elif "ServeController" in title:
            role = "controller"
        else:
            continue
        found.setdefault(role, p.pid)
    return found


def redis_pids(data_dir: Path) -> list[int]:
    """PIDs of the ``redis-server`` keeping its data in ``data_dir``."""
    pids = []
    for p in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if "redis-server" in (p.info["name"] or "") + cmdline and str(data_dir) in cmdline:
            pids.append(p.pid)
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)
