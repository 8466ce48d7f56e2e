#!/usr/bin/env python3
"""Run a command as if on a CPU K times slower: each of its processes is held to 1/K of a CPU.

    sudo python3 benchmarks/slow_cpu.py [--slowdown K] -- .venv/bin/python -m pytest -q [-m "not slow"]

What it is for: the suite's time on a 2-core machine slower than the one at hand (README: the AMD EPYC without
AVX-512 runs this suite 2.3x slower than the Xeon with AMX, and the Xeon runs it 1.5-1.9x slower than the
AMD EPYC with AVX-512), and whether any test depends on the speed of the machine (a timeout, a sleep that
assumes work is done by then).

How: a Linux cgroup CPU quota (cgroup v1 ``cpu.cfs_quota_us`` or v2 ``cpu.max``; needs root). The command's own
process gets a group, and so does each process it starts directly (pytest-xdist's workers); whatever those
start later (a forked trainer, torchrun's ranks) shares its parent's group. A group may use 1/K of a CPU per
10 ms (K from 1 to 10: the kernel's smallest quota is 1 ms), so a lone CPU-bound process runs K times slower,
as on a machine whose cores are each K times slower. Sharing a group only errs on the slow side: on the real
machine a worker's forked child would run beside it on the second core. Disk, sleeps and timeouts keep their
real speed, as on the slower machine. Under sudo the command runs as the user who called sudo (no root-owned
files in the checkout); root only writes the cgroups.

Before the command it times a CPU-bound loop alone and in a group (three times each, in turn), and prints the
ratio of the fastest times: the slowdown the quota really gives. Ctrl-C reaches the command as usual; a SIGTERM
sent to this script is passed on to it. The groups are removed at the end (a line names any that could not be).
Exit status: the command's (128 + N when a signal N ended it); 2 where cgroups cannot be used here or the
arguments are wrong, with one line saying why.
"""

from __future__ import annotations

import argparse
import errno
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

PERIOD_US = 10_000  # a short period: the quota is spread evenly, not spent in 100 ms bursts
MIN_QUOTA_US = 1_000  # the kernel refuses a smaller quota
SPIN = "import time\nt = time.perf_counter()\nx = 0\nfor i in range(3_000_000):\n    x += i * i\n" + (
    "print(time.perf_counter() - t)"
)


def fail(message: str) -> NoReturn:
    print(f"slow_cpu: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _cgroup_root() -> tuple[Path, bool]:
    """Where the CPU controller's groups live, and whether that is cgroup v2."""
    v1 = Path("/sys/fs/cgroup/cpu")
    if (v1 / "cpu.cfs_quota_us").exists():
        return v1, False
    v2 = Path("/sys/fs/cgroup")
    if "cpu" not in _read(v2 / "cgroup.controllers").split():
        fail("no cgroup cpu controller at /sys/fs/cgroup")
    if "cpu" not in _read(v2 / "cgroup.subtree_control").split():  # the root must hand it to its children
        try:
            (v2 / "cgroup.subtree_control").write_text("+cpu")
        except OSError as exc:
            fail(f"cannot enable the cpu controller in {v2 / 'cgroup.subtree_control'}: {exc.strerror}")
    return v2, True


def _own_group(root: Path, v2: bool) -> Path:
    """The group this process is in now (to return to after starting the command)."""
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        if (v2 and controllers == "") or (not v2 and "cpu" in controllers.split(",")):
            return root / path.lstrip("/")
    return root


class Groups:
    """CPU-quota cgroups under one parent folder, created on demand and removed at the end."""

    def __init__(self, slowdown: float) -> None:
        self.quota_us = round(PERIOD_US / slowdown)
        root, self.v2 = _cgroup_root()
        self.home = _own_group(root, self.v2)
        self.parent = root / f"cianet-slow-cpu-{os.getpid()}"
        self.made: list[Path] = []
        try:
            self.parent.mkdir()
            if self.v2:  # children may only limit the CPU where their parent delegates the controller
                (self.parent / "cgroup.subtree_control").write_text("+cpu")
        except OSError as exc:
            self.remove()
            root_hint = " (run as root)" if exc.errno in (errno.EACCES, errno.EPERM) else ""
            fail(f"cannot create {self.parent}: {exc.strerror}{root_hint}")

    def new(self, name: str) -> Path:
        """A new group with the quota."""
        group = self.parent / name
        group.mkdir()
        self.made.append(group)
        if self.v2:
            (group / "cpu.max").write_text(f"{self.quota_us} {PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(self.quota_us))
        return group

    def hold(self, pid: int) -> bool:
        """Move process ``pid`` into a new group of its own; False when it has already ended."""
        try:
            (self.new(f"p{pid}") / "cgroup.procs").write_text(str(pid))
            return True
        except ProcessLookupError:
            return False

    def start(self, command: list[str], **popen) -> subprocess.Popen:
        """Start ``command`` inside a new group: this process joins it for the fork, so the command never runs
        outside it, then returns to the group it came from."""
        group = self.new("command")
        (group / "cgroup.procs").write_text(str(os.getpid()))
        try:
            return subprocess.Popen(command, **popen)
        except OSError as exc:
            fail(f"cannot run {command[0]}: {exc.strerror}")
        finally:
            (self.home / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> list[Path]:
        """Remove every group (each empties once its processes have ended); those that would not go."""
        left = []
        for group in [*reversed(self.made), self.parent]:
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                left.append(group)
        return left


def children(pid: int) -> set[int]:
    """The processes ``pid`` started that are still alive (every thread's list: a thread may have forked)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        found.update(int(c) for c in _read(task / "children").split())
    return found


def watch(groups: Groups, top: int, done: threading.Event, failed: list[str]) -> None:
    """Give each direct child of ``top`` its own group as soon as it appears (polled every 5 ms); a process that
    could not be held is recorded in ``failed`` (it then runs at full speed)."""
    seen: set[int] = set()
    while not done.is_set():
        for pid in children(top) - seen:
            seen.add(pid)
            try:
                groups.hold(pid)
            except OSError as exc:
                failed.append(f"{pid}: {exc.strerror}")
        time.sleep(0.005)


def calibrate(groups: Groups, repeats: int = 3) -> float:
    """The slowdown the quota really gives a CPU-bound Python loop: its fastest time in a group over its fastest
    time alone (the fastest of ``repeats`` each, taken in turn: the machine's own speed may drift meanwhile)."""
    alone, held = [], []
    try:
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
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:
        fail(f"the calibration loop failed: {exc}")
    return min(held) / min(alone)


def as_caller() -> dict:
    """Popen arguments that run the command as the user who called sudo (none without sudo)."""
    if os.geteuid() != 0 or "SUDO_UID" not in os.environ:
        return {}
    user = pwd.getpwuid(int(os.environ["SUDO_UID"]))
    env = {**os.environ, "HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name}
    groups = os.getgrouplist(user.pw_name, user.pw_gid)
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": groups, "env": env}


def run(groups: Groups, command: list[str]) -> int:
    """Run ``command`` in its group, its direct children each in one of theirs; its exit status."""
    failed: list[str] = []
    done = threading.Event()
    proc = groups.start(command, **as_caller())
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    watcher = threading.Thread(target=watch, args=(groups, proc.pid, done, failed), daemon=True)
    watcher.start()
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # Ctrl-C reached the command too: let it finish stopping
                continue
    finally:
        done.set()
        watcher.join()
        signal.signal(signal.SIGTERM, previous)
    if failed:
        print(f"slow_cpu: warning: {len(failed)} processes ran unheld ({'; '.join(failed[:3])})", file=sys.stderr)
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slowdown", type=float, default=4.5, help="K, 1 to 10: each process gets 1/K of a CPU")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        fail("give the command to run after --")
    if not 1 <= args.slowdown <= PERIOD_US / MIN_QUOTA_US:  # also refuses nan
        fail(f"--slowdown must be between 1 and {PERIOD_US // MIN_QUOTA_US}, got {args.slowdown}")
    # a SIGTERM before the command runs (and after) ends this script through its clean-up
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    groups = Groups(args.slowdown)
    try:
        print(f"slow_cpu: a CPU-bound loop runs {calibrate(groups):.2f}x slower in a group", file=sys.stderr)
        start = time.perf_counter()
        code = run(groups, command)
        each = f"each process at 1/{args.slowdown:g} of a CPU"
        print(f"slow_cpu: exit {code} after {time.perf_counter() - start:.1f} s, {each}", file=sys.stderr)
        return code
    finally:
        left = groups.remove()
        if left:
            print(f"slow_cpu: warning: could not remove {', '.join(map(str, left))}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
