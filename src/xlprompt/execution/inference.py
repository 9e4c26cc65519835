"""Speed settings of inference: torch threads (the precision over the backbone is the engines' part,
engine/torch_engine.py).

Threads. On 2 cores that other jobs keep busy, OpenMP threads spin at every barrier waiting for a thread
the OS has descheduled: evaluation measured 1.3-4x slower with 2 threads than with 1 (a training step
up to 20x), while on idle cores 2 threads are faster. No static rule gets both cases right, so "auto" measures:
`ThreadTuner` runs a probe batch with each candidate count (1, the idle cores seen in /proc/stat,
torch's default), keeps the fastest in padded tokens/s, and probes again later because the other jobs come and go. The
interval between probes doubles each time the same count wins, so a slow candidate costs little.
"""
from __future__ import annotations

import contextlib
import os
import time

import torch

from ..core.errors import XlpromptError

PRECISIONS = ("auto", "fp32", "int8", "int8-checked", "bf16", "fp16")  # what --precision takes


# -------------------------------------------------------------------------------------------- threads
def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def idle_cores(sample_seconds: float = 0.2) -> float:
    """Cores idle over a short window of /proc/stat, sampled while this process sleeps. Where /proc/stat
    is missing, the 1-minute load average stands in: it lags and counts this process too."""
    cores = available_cores()

    def snapshot():
        with open("/proc/stat") as fh:
            fields = [float(x) for x in fh.readline().split()[1:]]
        return sum(fields), fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait

    try:
        total0, idle0 = snapshot()
        time.sleep(sample_seconds)
        total1, idle1 = snapshot()
        share = (idle1 - idle0) / max(total1 - total0, 1e-9)
        return max(0.0, min(1.0, share)) * (os.cpu_count() or cores)
    except (OSError, ValueError, IndexError):
        return max(0.0, cores - os.getloadavg()[0])


def thread_candidates() -> tuple[list[int], int]:
    """(counts to try, count to start with): 1, the idle cores and all cores; start with the idle ones."""
    cores = available_cores()
    idle = min(cores, max(1, round(idle_cores())))
    return sorted({1, idle, cores}), idle


class ThreadTuner:
    """Per batch: `before()` sets the thread count, `after(tokens, seconds)` records how it went."""

    def __init__(self, candidates: list[int], start: int, skip: int = 1, interval: float = 30.0,
                 max_interval: float = 480.0):
        self.candidates, self.current = candidates, start
        self.interval, self.max_interval = interval, max_interval
        self.batches = 0
        self.skip = skip  # the first batches pay one-off setup costs: never measure them
        self.queue: list[int] = []
        self.rates: dict[int, float] = {}
        self.next_probe = None
        self.history: list[dict] = []

    def before(self) -> int:
        if len(self.candidates) > 1 and not self.queue and self.batches >= self.skip and \
                (self.next_probe is None or time.perf_counter() >= self.next_probe):
            self.queue, self.rates = list(self.candidates), {}
        if self.queue:
            self.current = self.queue[0]
        torch.set_num_threads(self.current)
        return self.current

    def after(self, tokens: int, seconds: float) -> None:
        self.batches += 1
        if not self.queue:
            return
        self.rates[self.queue.pop(0)] = tokens / max(seconds, 1e-9)
        if self.queue:
            return
        best = max(self.rates, key=self.rates.get)
        same = bool(self.history) and self.history[-1]["chosen"] == best
        self.interval = min(self.interval * 2, self.max_interval) if same else self.interval
        self.next_probe = time.perf_counter() + self.interval
        self.current = best
        self.history.append({"batch": self.batches, "tokens_per_second": {str(k): round(v, 1) for k, v in
                                                                          self.rates.items()}, "chosen": best})

    def summary(self) -> dict:
        return {"policy": "auto", "candidates": self.candidates, "final": self.current, "probes": self.history}


@contextlib.contextmanager
def thread_setting(threads):
    """Yields a ThreadTuner for "auto", else fixes the count (an int) or leaves torch alone (None);
    torch's thread count is restored on exit."""
    before = torch.get_num_threads()
    try:
        if threads == "auto":
            yield ThreadTuner(*thread_candidates())
        else:
            if threads is not None:
                if int(threads) < 1:
                    raise XlpromptError(f"threads must be >= 1 or 'auto', got {threads}.")
                torch.set_num_threads(int(threads))
            yield None
    finally:
        torch.set_num_threads(before)
