"""Where a benchmark's CPU time goes while a timed block runs: the CPU seconds of every thread of
some processes or process trees (a root and its descendants, from /proc), and, where ``py-spy``
is on PATH, their sampled Python stacks (``py-spy record --format raw``, 100 Hz: one collapsed
stack and its sample count per line, thread names first) in $OUT/profile-<label>-<name>.txt.

A thread near 1 CPU second per wall second is a bottleneck a faster GPU cannot remove: in
benchmarks/network_gpu.py, the event loop of the engine replica or of the ingress.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import contextmanager
from typing import Iterator

import psutil

from benchmarks.shared import OUT

TICKS = os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    """``root`` and every process below it."""
    try:
        return [root, *(child.pid for child in psutil.Process(root).children(recursive=True))]
    except psutil.Error:
        return [root]


def thread_seconds(root: int, tree: bool = True) -> dict[str, float]:
    """CPU seconds (user + system) so far of each thread of ``root`` (and, with ``tree``, of the
    processes below it), keyed ``"<pid> <process name>/<thread name>"`` (a thread's tid when it
    has no name of its own)."""
    seconds = {}
    for pid in descendants(root) if tree else [root]:
        try:
            process = open(f"/proc/{pid}/comm").read().strip()
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                head, tail = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)
            except OSError:
                continue
            thread = head.split("(", 1)[1]
            fields = tail.split()
            name = f"{pid} {process}/{thread if thread != process else tid}"
            seconds[name] = seconds.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICKS
    return seconds


@contextmanager
def profiled(label: str, trees: dict[str, int], processes: dict[str, int] | None = None,
             top: int = 8) -> Iterator[dict]:
    """Profile the process trees ``trees`` (name: root pid) and the single ``processes`` (name:
    pid, without what they started) while the block runs. Yields a dict that holds, after the
    block, per name: ``cpu_s``, ``cpu_per_wall_s`` and its ``top`` threads by CPU seconds, and
    ``wall_s``."""
    roots = {**trees, **(processes or {})}
    alone = set(processes or ())
    before = {name: thread_seconds(pid, name not in alone) for name, pid in roots.items()}
    spy = shutil.which("py-spy")
    spies = [subprocess.Popen([spy, "record", "--pid", str(pid), *(() if name in alone else ("--subprocesses",)),
                               "--threads", "--nonblocking", "--rate", "100", "--format", "raw",
                               "--output", os.path.join(OUT, f"profile-{label}-{name}.txt")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for name, pid in roots.items()] if spy else []
    result: dict = {"label": label, "py_spy": bool(spy)}
    started = time.monotonic()
    try:
        yield result
    finally:
        wall = time.monotonic() - started
        for p in spies:
            p.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for p in spies:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        result["wall_s"] = round(wall, 2)
        for name, pid in roots.items():
            after = thread_seconds(pid, name not in alone)
            used = {t: after[t] - before[name].get(t, 0.0) for t in after}
            busiest = sorted(used.items(), key=lambda kv: -kv[1])[:top]
            total = sum(used.values())
            result[name] = {"cpu_s": round(total, 2), "cpu_per_wall_s": round(total / wall, 2),
                            "threads": {t: round(s, 2) for t, s in busiest}}
