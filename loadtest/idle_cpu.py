"""CPU an idle local server spends on keeping its health truthful (issue 22: the watchdog's probes).

    .venv/bin/python -m loadtest.idle_cpu [--seconds 60] [--settle 10]

Starts the launcher's server with its watchdog (as `make serve` does), lets it settle, then, with no
client traffic, counts the CPU time (user + system, /proc/<pid>/stat) of tritonserver and its stubs
and of this process (where the watchdog's threads run) over --seconds. Prints CPU-seconds per idle
minute, the watchdog's probe inferences in the window, and the machine's load average (the figure
depends on what else runs: name the machine and its load with it).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from iqa.serving.launcher import REPO, Ports, TritonServer, free_ports

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` (its threads included), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (proc(5) fields 14, 15)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if parent == pid:
                found.append(int(entry.name))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="idle window measured")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after ready before the window opens")
    args = parser.parse_args(argv)
    run_dir = REPO / ".run" / "idle-cpu"
    with TritonServer(ports=Ports(*free_ports(3)), run_dir=run_dir, log_file=run_dir / "tritonserver.log",
                      exit_timeout_s=10, watchdog=True, health_port=0) as server:
        time.sleep(args.settle)
        server_pid = server.process.pid
        pids = [server_pid, *children(server_pid)]
        me = os.getpid()
        probes_before = getattr(server.guard, "probes", None)
        load_before = os.getloadavg()
        before = {pid: cpu_seconds(pid) for pid in pids} | {me: cpu_seconds(me)}
        time.sleep(args.seconds)
        after = {pid: cpu_seconds(pid) for pid in before}
        probes = getattr(server.guard, "probes", None)
        ready = server.guard.verdict().ready
    per_minute = 60.0 / args.seconds
    server_cpu = sum(after[p] - before[p] for p in pids) * per_minute
    watchdog_cpu = (after[me] - before[me]) * per_minute
    print(f"machine: {platform.node()}, {len(os.sched_getaffinity(0))} CPUs; load average before "
          f"{load_before[0]:.2f} / after {os.getloadavg()[0]:.2f} (1 min)")
    print(f"idle {args.seconds:.0f} s, ready {ready}: tritonserver + {len(pids) - 1} stubs {server_cpu:.2f} CPU-s per "
          f"minute, launcher (watchdog) {watchdog_cpu:.2f} CPU-s per minute, total {server_cpu + watchdog_cpu:.2f} "
          f"({(server_cpu + watchdog_cpu) / 60 * 100:.1f} % of a core); probe inferences in the window: "
          f"{'n/a' if probes is None else probes - probes_before}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
