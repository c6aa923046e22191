"""How busy the machine is while the test suite runs: whether another worker can help.

    .venv/bin/python benchmarks/suite_load.py [--workers N] [pytest arguments...]

Runs `python -m pytest` as the README says (the workers of `pyproject.toml`, or `-n N`),
with any further arguments, and prints its wall time and
the share of the machine's CPU time that was busy meanwhile (all processes, from
/proc/stat, Linux only). A suite that keeps every core busy gets nothing from more workers.
"""

from __future__ import annotations

import subprocess
import sys
import time


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) ticks of all CPUs since boot."""
    # user nice system idle iowait irq softirq steal (guest time is counted in user's)
    user, nice, system, idle, iowait, irq, softirq, steal = (
        int(v) for v in open("/proc/stat").readline().split()[1:9]
    )
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def main() -> int:
    args = sys.argv[1:]
    workers = "the configured"
    if args[:1] == ["--workers"]:
        workers, args = args[1], ["-n", args[1], *args[2:]]
    busy0, total0 = cpu_ticks()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", *args])
    wall = time.monotonic() - started
    busy1, total1 = cpu_ticks()
    share = (busy1 - busy0) / max(total1 - total0, 1)
    print(f"{workers} workers: {wall:.0f} s, the machine busy {share:.0%} of it "
          f"(pytest exit {done.returncode})")  # fmt: skip
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
