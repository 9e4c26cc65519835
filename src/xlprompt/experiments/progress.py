"""Progress across a grid: done / running / failed / remaining and an ETA from this sweep's own runs.

rich's own time-remaining column would count runs skipped as already done as instant work; this ETA uses
only the runs finished (or failed) by this sweep, divided over the parallel slots.
"""
from __future__ import annotations

import time

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class SweepProgress:
    def __init__(self, total: int, already_done: int, slots: int, enabled: bool = True):
        self.total, self.slots, self.enabled = total, max(1, slots), enabled
        self.done, self.failed, self.running, self.held = already_done, 0, 0, 0
        self.durations: list[float] = []
        self._starts: dict[str, float] = {}
        self._bar = None

    def __enter__(self):
        if self.enabled:
            self._bar = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[info]}"), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task("sweep", total=self.total, completed=self.done, info="")
            self._refresh()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._refresh()
            self._bar.__exit__(*exc)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(escape(text), highlight=False)

    def started(self, spec) -> None:
        self._starts[spec.run_id] = time.time()
        self.running += 1
        self._refresh()

    def finished(self, spec, outcome: dict) -> None:
        status = outcome["status"]
        begun = self._starts.pop(spec.run_id, None)
        if begun is not None:
            self.running -= 1
        if status == "locked":  # another process has it; counted under "elsewhere" until it resolves
            self._refresh()
            return
        if status == "failed":
            self.failed += 1
        else:
            self.done += 1
        if status in ("done", "failed") and begun is not None:
            self.durations.append(time.time() - begun)
        if self._bar is not None:
            label = f"{spec.run_id} {spec.label()}"
            if status == "done":
                acc = outcome.get("accuracy")
                acc_text = f" · mean accuracy {acc:.3f}" if isinstance(acc, float) else ""
                self.note(f"done    {label} · {outcome.get('seconds', 0):.0f}s{acc_text}")
            elif status == "failed":
                first = str(outcome.get("error", "")).splitlines()[0] if outcome.get("error") else ""
                self._bar.console.print(f"[red]failed[/]  {escape(label)}: {escape(first)}", highlight=False)
            elif status == "skipped":
                self.note(f"skipped {label} (done by another process)")
        self._refresh()

    def waiting(self, count: int) -> None:
        if count != self.held:
            self.held = count
            self._refresh()

    def eta(self) -> float | None:
        remaining = self.total - self.done - self.failed
        if not self.durations or remaining <= 0:
            return None
        mean = sum(self.durations) / len(self.durations)
        return mean * remaining / self.slots

    def _refresh(self) -> None:
        if self._bar is None:
            return
        remaining = self.total - self.done - self.failed
        parts = [f"done {self.done}", f"running {self.running}", f"failed {self.failed}",
                 f"remaining {remaining}"]
        if self.held:
            parts.append(f"held elsewhere {self.held}")
        eta = self.eta()
        parts.append(f"eta {_clock(eta)}" if eta is not None else "eta –")
        self._bar.update(self._task, completed=self.done + self.failed, info=" · ".join(parts))
