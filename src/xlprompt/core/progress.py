"""Progress reporting: a rich bar on a terminal, plain timed lines in logs, nothing when disabled.

Rich draws a live bar only on a terminal; redirected to a file (nohup, CI, a cluster's job log) it would
print the bar once, at the end, so long runs there get a plain line every `LOG_INTERVAL` seconds instead.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
    TimeRemainingColumn

LOG_INTERVAL = 30.0  # seconds between plain progress lines when output is not a terminal


class _Silent:
    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass


class _LogLines:
    """The part of rich.Progress that xlprompt uses, writing `description done/total (pct) elapsed eta info`."""

    def __init__(self, console: Console, interval: float | None = None):
        self.console, self.tasks = console, []
        self.interval = LOG_INTERVAL if interval is None else interval

    def add_task(self, description: str, total: float | None = None, **fields):
        now = time.monotonic()
        self.tasks.append({"description": description, "total": total, "completed": 0, "started": now,
                           "printed": now, "fields": dict(fields)})
        return len(self.tasks) - 1

    def update(self, task_id: int, advance: float = 0, description: str | None = None, **fields):
        task = self.tasks[task_id]
        task["completed"] += advance
        task["fields"].update(fields)
        if description is not None:
            task["description"] = description
        now = time.monotonic()
        finished = task["total"] is not None and task["completed"] >= task["total"]
        news = not advance and (fields or description)  # a status update (an epoch's dev loss) always shows
        if not news and (task.get("done") if finished else now - task["printed"] < self.interval):
            return
        task["printed"], task["done"] = now, finished
        self.console.print(self._line(task, now), highlight=False, soft_wrap=True)

    @staticmethod
    def _line(task: dict, now: float) -> str:
        done, total, elapsed = task["completed"], task["total"], now - task["started"]
        parts = [task["description"], f"{done:g}/{total:g}" if total else f"{done:g}"]
        if total:
            parts.append(f"({100 * done / total:.0f}%)")
        parts.append(f"{elapsed:.0f}s")
        if total and 0 < done < total:
            parts.append(f"eta {elapsed * (total - done) / done:.0f}s")
        info = task["fields"].get("info")
        return " ".join(parts + ([str(info)] if info else []))


@contextmanager
def progress_bar(enabled: bool = True, console: Console | None = None):
    if not enabled:
        yield _Silent()
        return
    console = console or Console()
    if not console.is_terminal:
        yield _LogLines(console)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console, transient=False) as bar:
        yield bar
