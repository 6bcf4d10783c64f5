"""How many CPUs a preprocessing instance may use, and so how many decode threads it runs.

Standard library only: the image's Python backend runs it (docker/Dockerfile copies it).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# At most this many threads per instance: a dynamic batch holds at most 8 images (MAX_REQUEST_ROWS).
MAX_DECODE_THREADS = 8


def decode_threads(instances: int, cpus: float | None = None) -> int:
    """Decode threads for one of `instances` instances of a model: its share of the CPUs it may use,
    ceil(cpus / instances), between 1 and MAX_DECODE_THREADS.

    `cpus` defaults to usable_cpus(). Each instance is its own process and sizes its own pool, so
    without the share, four decoders and two map instances under an 8-CPU limit ran 6 x 8 = 48 threads.
    """
    cpus = usable_cpus() if cpus is None else cpus
    return max(1, min(MAX_DECODE_THREADS, math.ceil(cpus / max(instances, 1))))


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")) -> float:
    """The CPUs this process may use: its CPU affinity, or its cgroup's CPU quota where that is lower.

    os.sched_getaffinity counts the cores a container may run on (all of the node's, under Kubernetes'
    default CPU manager), not its CPU limit, which is a CFS quota: cgroup v2 `cpu.max` ("<quota> <period>"
    or "max <period>", Linux Documentation/admin-guide/cgroup-v2.rst), cgroup v1 `cpu.cfs_quota_us` /
    `cpu.cfs_period_us` (-1: none). The tightest quota of the process's cgroup and its ancestors applies.
    """
    affinity = float(len(os.sched_getaffinity(0)))
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    return min(affinity, quota) if quota is not None else affinity


def cgroup_cpu_quota(cgroup_root: Path = Path("/sys/fs/cgroup"),
                     proc_cgroup: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs allowed by the CFS quota of this process's cgroup (v2 or v1) and its ancestors; None if unlimited."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: the unified hierarchy, mounted at cgroup_root
            for folder in _ancestors(cgroup_root, path):
                quota, _, period = _read(folder / "cpu.max").partition(" ")
                if quota and quota != "max":
                    quotas.append(int(quota) / int(period))
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own mount
            mount = next((cgroup_root / name for name in (controllers, "cpu,cpuacct", "cpu")
                          if (cgroup_root / name).is_dir()), None)
            for folder in _ancestors(mount, path) if mount else ():
                quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
                if quota and period and int(quota) > 0:
                    quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def _ancestors(root: Path, path: str) -> list[Path]:
    parts = [part for part in path.split("/") if part]
    return [root.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
