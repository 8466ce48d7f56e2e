#!/usr/bin/env python3
"""Run a command as if on a CPU K times slower: each of its processes is held to 1/K of a CPU.

    sudo python3 benchmarks/slow_cpu.py [--slowdown K] -- bash scripts/test.sh [-m "not slow"]

What it is for: the suite's time on a 2-core machine slower than the one at hand (README: the AMD EPYC without
AVX-512 runs this suite 2.3x slower than the Xeon with AMX, and the Xeon runs it 1.5-1.6x slower than the
AMD EPYC with AVX-512), and whether any test depends on the speed of the machine (a timeout, a sleep that
assumes work is done by then).

How: a Linux cgroup CPU quota (cgroup v1 ``cpu.cfs_quota_us`` or v2 ``cpu.max``; needs root). The command's own
process gets a group, and so does each process it starts directly (pytest-xdist's workers); whatever those
start later (a forked trainer, torchrun's ranks) shares its parent's group. A group may use 1/K of a CPU per
10 ms, so a lone CPU-bound process runs K times slower, as on a machine whose cores are each K times slower.
Sharing a group only errs on the slow side: on the real machine a worker's forked child would run beside it
on the second core. Disk, sleeps and timeouts keep their real speed, as on the slower machine.

Before the command it times a CPU-bound loop alone and in a group (three times each, in turn), and prints the
ratio of the fastest times: the slowdown the quota really gives. Exit status: the command's; 2 where cgroups
cannot be used here (not root, no cpu controller).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

PERIOD_US = 10_000  # a short period: the quota is spread evenly, not spent in 100 ms bursts
SPIN = "import time\nt = time.perf_counter()\nx = 0\nfor i in range(3_000_000):\n    x += i * i\n" + (
    "print(time.perf_counter() - t)"
)


class Groups:
    """CPU-quota cgroups under one parent folder, created on demand and removed at the end."""

    def __init__(self, slowdown: float) -> None:
        self.quota_us = max(1000, round(PERIOD_US / slowdown))
        v1 = Path("/sys/fs/cgroup/cpu")
        if (v1 / "cpu.cfs_quota_us").exists():
            self.v2, root = False, v1
        elif "cpu" in _read(Path("/sys/fs/cgroup/cgroup.controllers")).split():
            self.v2, root = True, Path("/sys/fs/cgroup")
        else:
            fail("no cgroup cpu controller at /sys/fs/cgroup")
        self.parent = root / f"cianet-slow-cpu-{os.getpid()}"
        try:
            self.parent.mkdir()
            if self.v2:  # children may only limit the CPU where their parent delegates the controller
                (self.parent / "cgroup.subtree_control").write_text("+cpu")
        except OSError as exc:
            fail(f"cannot create {self.parent}: {exc.strerror} (run as root)")
        self.made: list[Path] = []

    def hold(self, pid: int) -> bool:
        """Move process ``pid`` into a new group of its own; False when it has already ended."""
        group = self.parent / f"p{pid}"
        group.mkdir(exist_ok=True)
        self.made.append(group)
        if self.v2:
            (group / "cpu.max").write_text(f"{self.quota_us} {PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        try:
            (group / "cgroup.procs").write_text(str(pid))
            return True
        except (ProcessLookupError, OSError):
            return False

    def remove(self) -> None:
        for group in [*self.made, self.parent]:
            for _ in range(50):  # a group empties once its last process has been reaped
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


def fail(message: str) -> NoReturn:
    print(f"slow_cpu: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def children(pid: int) -> set[int]:
    """The processes ``pid`` started that are still alive (every thread's list: a thread may have forked)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found.update(int(c) for c in _read(task / "children").split())
    return found


def watch(groups: Groups, top: int, done: threading.Event) -> None:
    """Give each direct child of ``top`` its own group as soon as it appears (polled every 5 ms)."""
    seen: set[int] = set()
    while not done.is_set():
        for pid in children(top) - seen:
            seen.add(pid)
            groups.hold(pid)
        time.sleep(0.005)


def calibrate(groups: Groups, repeats: int = 3) -> float:
    """The slowdown the quota really gives a CPU-bound Python loop: its fastest time in a group over its fastest
    time alone (the fastest of ``repeats`` each, taken in turn: the machine's own speed may drift meanwhile)."""
    alone, held = [], []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", SPIN], capture_output=True, text=True, check=True)
        alone.append(float(done.stdout))
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.readline()\n" + SPIN],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        groups.hold(proc.pid)
        held.append(float(proc.communicate("go\n")[0]))
    return min(held) / min(alone)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slowdown", type=float, default=4.5, help="K: each process gets 1/K of a CPU (default 4.5)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command or args.slowdown < 1:
        ap.error("give a command after -- and a --slowdown >= 1")
    groups = Groups(args.slowdown)
    try:
        print(f"slow_cpu: a CPU-bound loop runs {calibrate(groups):.2f}x slower in a group", file=sys.stderr)
        start = time.perf_counter()
        proc = subprocess.Popen(command)
        groups.hold(proc.pid)
        done = threading.Event()
        watcher = threading.Thread(target=watch, args=(groups, proc.pid, done), daemon=True)
        watcher.start()
        code = proc.wait()
        done.set()
        watcher.join()
        wall = time.perf_counter() - start
        each = f"each process at 1/{args.slowdown:g} of a CPU"
        print(f"slow_cpu: exit {code} after {wall:.1f} s, {each}", file=sys.stderr)
        return code
    finally:
        groups.remove()


if __name__ == "__main__":
    sys.exit(main())
