"""The `perf stat` instrument of the per-call cost bench (perf/call_cost.py): counting a server process's events
over a window, per thread where asked, and its libc malloc calls through a uprobe.

- `perf_window(pid, events, seconds)` runs `perf stat -x, -p PID` for `seconds` and parses its output
  (`parse_perf_stat`, `parse_per_thread` with `--per-thread`); task-clock is in ms, as perf reports it;
- `MallocProbe`: a uprobe on the server's libc `malloc` in a probe group of its own (MALLOC_EVENT), made on
  entry and removed on exit, so that no other user's probe is reused or removed; counting it costs CPU, so a
  bench counts it in a window of its own;
- `perf_unusable()` says why perf cannot count here (missing, or perf_event_paranoid), None when it can.

Needs `perf` (linux-tools) and, for the probe, root. Nothing here runs a load or a server.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

COUNTING_EVENTS = ("task-clock", "context-switches", "cpu-migrations", "page-faults")
# A group of our own, so that no other user's probe on malloc is reused or removed by this bench.
MALLOC_EVENT = "adrank_call_cost:malloc"


def parse_perf_stat(text: str) -> dict[str, float | None]:
    """`perf stat -x,` output -> {event: count}; task-clock in ms (perf's unit for it).

    A line is `value,unit,event,run time,percentage,...`. `<not counted>`: the event never ran because the task
    never ran in the window, so its count is 0. `<not supported>`: None. Other lines (perf's warnings) are skipped.
    """
    counts: dict[str, float | None] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if line.startswith("#") or len(fields) < 4 or not fields[2].strip():
            continue
        value, unit, event = fields[0].strip(), fields[1].strip(), fields[2].strip()
        if value == "<not counted>":
            counts[event] = 0.0
        elif value == "<not supported>":
            counts[event] = None
        else:
            try:
                number = float(value)
            except ValueError:
                continue
            counts[event] = number / 1e6 if unit == "ns" else number * 1e3 if unit == "sec" else number
    return counts


def parse_per_thread(text: str) -> dict[str, dict[str, float | None]]:
    """`perf stat --per-thread -x,` output -> {thread name: {event: count}}, summed over the threads of a name.

    A line is `<name>-<tid>,value,unit,event,...`; a name may itself hold '-', so the tid is cut at the last one.
    """
    threads: dict[str, dict[str, float | None]] = {}
    for line in text.splitlines():
        head, _, rest = line.partition(",")
        name, dash, tid = head.rpartition("-")
        if not dash or not tid.isdigit():
            continue
        group = threads.setdefault(name, {})
        for event, value in parse_perf_stat(rest).items():
            previous = group.get(event, 0.0)
            group[event] = None if value is None or previous is None else previous + value
    return {name: group for name, group in threads.items() if group}


def summed(threads: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    """The per-thread counts added up over every thread: the process's."""
    counts: dict[str, float | None] = {}
    for group in threads.values():
        for event, value in group.items():
            previous = counts.get(event, 0.0)
            counts[event] = None if value is None or previous is None else previous + value
    return counts


@dataclass
class Window:
    """One `perf stat -p` window over the server: its counts, its span on perf_counter's clock, the switches."""

    seconds: float
    start: float
    end: float
    counts: dict[str, float | None]
    voluntary: int  # context switches by the server's threads, from /proc (the thread blocked)
    involuntary: int  # (the thread was preempted: on a shared machine, often by someone else's work)
    threads: dict[str, dict[str, float | None]] = field(default_factory=dict)  # by thread name (--per-thread)

    def rate(self, event: str) -> float | None:
        value = self.counts.get(event)
        return None if value is None else value / self.seconds


def thread_switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches so far, summed over the process's threads."""
    voluntary = involuntary = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:  # the thread exited between the listing and the read
            continue
        for line in text.splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                voluntary += int(line.split()[1])
            elif line.startswith("nonvoluntary_ctxt_switches:"):
                involuntary += int(line.split()[1])
    return voluntary, involuntary


def perf_window(pid: int, events: Sequence[str], seconds: float, per_thread: bool = False) -> Window:
    """Counts `events` of process `pid` (all its threads; with `per_thread`, by thread name too) for `seconds`.

    perf counts for as long as its `sleep` runs; the window is taken to end when perf returns (reading and
    printing the counts takes microseconds) and to start `seconds` before, not when perf was launched, since
    perf's own start-up (tens of ms on a busy machine) is not counted.
    """
    command = ["perf", "stat", "-x", ",", "-e", ",".join(events), "-p", str(pid)]
    command += ["--per-thread"] if per_thread else []
    command += ["--", "sleep", f"{seconds:.3f}"]
    before = thread_switches(pid)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=False)
    end = time.perf_counter()
    after = thread_switches(pid)
    if done.returncode != 0:
        raise RuntimeError(f"perf stat -p {pid} failed ({done.returncode}): {done.stderr.strip()[-300:]}")
    threads = parse_per_thread(done.stderr) if per_thread else {}
    counts = summed(threads) if per_thread else parse_perf_stat(done.stderr)
    missing = [event for event in events if event not in counts]
    if missing:
        raise RuntimeError(f"perf stat gave no count for {missing}: {done.stderr.strip()[-300:]}")
    return Window(seconds, end - seconds, end, counts, after[0] - before[0], after[1] - before[1], threads)


def perf_unusable() -> str | None:
    """Why `perf stat -p` cannot count another process here, or None."""
    if shutil.which("perf") is None:
        return "perf is not installed"
    paranoid = Path("/proc/sys/kernel/perf_event_paranoid")
    level = int(paranoid.read_text()) if paranoid.exists() else 2
    if os.geteuid() != 0 and level > 1:
        return f"perf_event_paranoid is {level} and this is not root: perf stat -p of a server is refused"
    return None


def cpu_flags() -> list[str]:
    """The vector-unit flags of this machine's CPU (the issue asks for them beside the model): AVX*, FMA, VNNI, AMX."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return sorted(flag for flag in line.split(":", 1)[-1].split() if re.match(r"(avx|fma|amx|.*vnni)", flag))


def process_libc(pid: int) -> Path | None:
    """The libc file that process `pid` maps (the one whose malloc it calls): the bench probes its own, the system
    libc that the Python and grpc++ servers link too."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split()[-1] if len(line.split()) >= 6 else ""
        if re.search(r"/libc(\.so\.6|-[\d.]+\.so)$", path):
            return Path(path)
    return None


class MallocProbe:
    """The uprobe `adrank_call_cost:malloc` on a libc's malloc: made for the run, removed after if made here.

    `event` is the perf event to count, or None with `reason` saying why allocations are not measured.
    """

    def __init__(self, libc: Path | None) -> None:
        self.libc = libc
        self.event: str | None = None
        self.reason = ""
        self._made = False

    def __enter__(self) -> MallocProbe:
        if self.libc is None:
            self.reason = "not measured: no libc found in the server's memory map"
            return self
        listed = subprocess.run(["perf", "probe", "--list"], capture_output=True, text=True, check=False)
        if MALLOC_EVENT not in listed.stdout + listed.stderr:
            made = subprocess.run(
                ["perf", "probe", "-x", str(self.libc), "--add", f"{MALLOC_EVENT}=malloc"],
                capture_output=True,
                text=True,
                check=False,
            )
            if made.returncode != 0:
                self.reason = f"not measured: perf probe -x {self.libc} malloc failed: {made.stderr.strip()[-200:]}"
                return self
            self._made = True
        self.event = MALLOC_EVENT
        return self

    def __exit__(self, *exc: object) -> None:
        if self._made:
            subprocess.run(["perf", "probe", "-d", MALLOC_EVENT], capture_output=True, check=False)
