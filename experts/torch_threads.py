"""Torch's intra-op threads chosen per forward pass, from how busy the rest of the host keeps its cores.

On a 2-core host neither fixed choice is right for everyone (docs/benchmarks.md,
sections 6 and 23). On a quiet host two threads win: routed search at 32
clients 1.21x Infinity's throughput against 0.74x with one. When another
process holds a core, every operator's OpenMP barrier waits for the thread
that lost its core, and one thread wins: 1.8x faster at one client. So with
``threads="auto"`` the encoder asks :class:`ThreadChoice` before each pass
how many cores its passes may use. It reads the host's busy time
(``/proc/stat``, the cores this process may run on), takes away this
process's own CPU time, and counts one core fewer for every core the other
processes keep busy, at least one. The encoder's model lock shares those
cores among the passes and callers running at once (:mod:`experts.model_lock`).

The reading is refreshed at most every ``interval_s`` and changes the choice
only past a margin (hysteresis), so a neighbour near the threshold does not
flip it every pass. Where ``/proc/stat`` cannot be read (not Linux), one
thread, the choice that is never badly wrong. In a container with a CPU quota
(``docker run --cpus 2``) the passes share the quota's whole CPUs instead,
and ``/proc/stat``, which shows the whole host, is not read. Other torch work of this process
(training beside the service) says so with :meth:`ThreadChoice.holding_a_core`,
and runs on one thread (the process-wide default an ``"auto"`` encoder sets).

Torch's thread count is per OS thread under OpenMP (``torch.set_num_threads``
sets the calling thread's), so the choice is applied in the thread that runs
the pass, and costs a comparison when it did not change.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["ThreadChoice", "cpu_quota", "host_busy_seconds", "usable_cores"]

#: Columns of a ``/proc/stat`` cpu line that count as busy: user nice system (idle iowait) irq softirq steal.
#: Steal is time a hypervisor gave this virtual core to another machine: a core held by someone else too.
_BUSY_COLUMNS = (0, 1, 2, 5, 6, 7)
#: Another process's load, in cores, rounds up to a core held from this much over a whole core (and back down
#: from this much under it): 0.6 of a core counts as one, and stays one until it falls to 0.4.
_MARGIN = 0.6


def cpu_quota(cgroup: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs this process's cgroup may use (a container's ``--cpus``), or None without a limit.

    cgroup v2's ``cpu.max`` ("200000 100000": 2 CPUs; "max 100000": none), else v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (-1: none).
    """
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def usable_cores(quota: float | None = None) -> int:
    """The cores this process may run on: its CPU affinity (where the OS has one), at most ``quota`` whole CPUs."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores if quota is None else max(1, min(cores, math.floor(quota)))


def host_busy_seconds(cores: set[int] | None = None) -> float | None:
    """Busy CPU seconds since boot over ``cores`` (all when None), from ``/proc/stat``; None where it cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            lines = stat.read().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        if cores is not None and int(name[3:]) not in cores:
            continue
        columns = rest.split()
        ticks += sum(int(columns[i]) for i in _BUSY_COLUMNS if i < len(columns))
    return ticks / os.sysconf("SC_CLK_TCK")


class ThreadChoice:
    """How many cores forward passes may use now (:meth:`threads`); :meth:`apply` sets a pass's share in its thread.

    ``most``: the most threads a pass may use (default: the usable cores).
    ``host_busy`` and ``own_cpu`` read busy seconds of the host and of this
    process (replaceable, for tests); ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        most: int | None = None,
        *,
        interval_s: float = 0.5,
        host_busy: Callable[[], float | None] | None = None,
        own_cpu: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
        cores: int | None = None,
        quota: float | None = None,
    ) -> None:
        """``quota``: the cgroup's CPUs (:func:`cpu_quota`, read when None and ``host_busy`` is not given); under a
        quota below the host's cores, the passes share the quota, and the host's other load is not read: it is
        the load of other cgroups, on cores this one's time is not tied to."""
        if quota is None and host_busy is None:
            quota = cpu_quota()
        unlimited = usable_cores()
        self.cores = cores or usable_cores(quota)
        self.most = max(1, most or self.cores)
        self.interval_s = interval_s
        #: False under a quota: the host's load is not read, and only this process's passes and training count.
        self.reads_host = not (quota is not None and quota < unlimited)
        if host_busy is None:
            try:
                affinity: set[int] | None = os.sched_getaffinity(0)
            except AttributeError:
                affinity = None
            self._host_busy: Callable[[], float | None] = lambda: host_busy_seconds(affinity)
        else:
            self._host_busy = host_busy
        self._own_cpu = own_cpu
        self._clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, float, float] | None = self._sample() if self.reads_host else None
        #: Cores the other processes held at the last reading (rounded with the margin).
        self.cores_taken = 0
        #: Their load at the last reading, in cores (for metrics and logs).
        self.others_load = 0.0
        #: Threads the last pass was given.
        self.last = 0
        self._held = 0  # cores held by other torch work of this process (training beside the service)

    def _sample(self) -> tuple[float, float, float] | None:
        busy = self._host_busy()
        return None if busy is None else (self._clock(), busy, self._own_cpu())

    def threads(self) -> int:
        """The cores this process's forward passes may use now, together (at least one)."""
        with self._lock:
            if self.reads_host:
                if self._last is None:  # the host's load cannot be read
                    return 1
                if self._clock() - self._last[0] >= self.interval_s:
                    self._update()
            return max(1, min(self.most, self.cores - self.cores_taken - self._held))

    @contextmanager
    def holding_a_core(self) -> Iterator[None]:
        """Around other work of this process that keeps a core busy (training): passes meanwhile get one fewer.

        The host's reading cannot see it: this process's own CPU time is taken away from the host's.
        """
        with self._lock:
            self._held += 1
        try:
            yield
        finally:
            with self._lock:
                self._held -= 1

    def _update(self) -> None:
        sample = self._sample()
        if sample is None or self._last is None:
            self._last = None
            return
        (then, busy_then, own_then), (now, busy_now, own_now) = self._last, sample
        self._last = sample
        others = max(0.0, (busy_now - busy_then) - (own_now - own_then)) / max(now - then, 1e-9)
        self.others_load = others
        up, down = math.floor(others + 1 - _MARGIN), math.floor(others + _MARGIN)
        if up > self.cores_taken:
            self.cores_taken = up
        elif down < self.cores_taken:
            self.cores_taken = down

    def apply(self, threads: int) -> None:
        """Set torch's threads in the calling thread for the next pass (only when they change), as granted to it."""
        self.last = threads
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
