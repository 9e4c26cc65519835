"""Run a grid into a store: resumable, crash-safe, on one process, a process pool, or Ray.

Every backend calls the same `execute_run(spec, store)`; the store directory is the only shared state, so a
sweep can be killed at any instant and rerun: done runs (done.json present) are skipped, a folder without
done.json (crashed, or failed earlier) is cleared and redone, and a per-run lock keeps two sweeps on one
store from running the same run twice. See store.py for the layout.
"""
from __future__ import annotations

import os
import shutil
import socket
import time
import traceback
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from ..core import io
from ..core.errors import XlpromptError
from ..execution.inference import available_cores
from .grid import RunSpec, expand_grid
from .lock import RunLock
from .store import DONE, FAILED, RESULTS, SPEC, rebuild_store, runs_dir, update_store

BACKENDS = ("local", "ray")
_BACKBONES: dict = {}  # model key -> frozen Backbone, reused by later runs in this process


def _classifier(config, device=None, dtype=None):
    """The model for a run, reusing this process's loaded backbone when the run keeps it frozen.

    A backbone a run trains (--no-freeze, finetune) is loaded fresh and never cached, so no later run can
    start from weights another run changed; the cache is emptied first to keep one model in memory.
    """
    from ..models.backbone import Backbone
    from ..models.classifier import build_classifier, plan_for_config
    from ..tasks import get_task

    from transformers.utils import logging as hf_logging

    task = get_task(config.task)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # per-run loading bars would drown the sweep's own progress
    try:
        # a sweep's plan: fp32 on CPU unless asked (its numbers must not depend on the CPU), as on a GPU
        plan = plan_for_config(config, device=device, dtype=dtype, purpose="sweep")
        if not config.freeze_model:
            _BACKBONES.clear()
            return build_classifier(config, task, plan=plan)
        key = (*_model_key(config.model), str(plan.device), str(plan.dtype))
        if key not in _BACKBONES:
            _BACKBONES.clear()
            _BACKBONES[key] = Backbone.load(config.model, dtype=plan.dtype, device=plan.device)
        return build_classifier(config, task, backbone=_BACKBONES[key])
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _model_key(name: str) -> tuple:
    """A local model folder rewritten on disk must not be served from the cache (long-lived Ray workers)."""
    path = Path(name).expanduser()
    if not path.is_dir():
        return (name,)
    return (name, *sorted((p.name, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()))


def execute_run(spec_dict: dict, store_dir: str, threads: int | None = None, device=None, dtype=None) -> dict:
    """Train, save, evaluate one run into DIR/runs/<id>/, writing done.json last (or failed.json).

    `device`/`dtype` say how it executes (device.py), never what it is: they change no run id or folder.

    Returns {"run_id", "status": done | skipped | locked | failed, ...}; never raises for a run's own error,
    so one bad config cannot stop a sweep.
    """
    spec = RunSpec.from_dict(spec_dict)
    rid = spec.run_id
    folder = runs_dir(store_dir) / rid
    if (folder / DONE).is_file():
        return {"run_id": rid, "status": "skipped"}
    folder.parent.mkdir(parents=True, exist_ok=True)
    lock = RunLock(folder.parent / f"{rid}.lock")
    if not lock.acquire():
        return {"run_id": rid, "status": "locked", "holder": lock.holder()}
    try:
        if (folder / DONE).is_file():  # finished by another process between our check and the lock
            return {"run_id": rid, "status": "skipped"}
        if folder.exists():  # a crashed or failed attempt: nothing in it can be trusted
            shutil.rmtree(folder)
        folder.mkdir()
        io.write_json(folder / SPEC, spec.to_dict())
        return _train_and_evaluate(spec, folder, threads, device, dtype)
    finally:
        lock.release()


def _train_and_evaluate(spec: RunSpec, folder: Path, threads: int | None, device=None, dtype=None) -> dict:
    import torch

    from ..evaluation.evaluate import evaluate
    from ..evaluation.representations import FILE as ALIGNMENT_FILE
    from ..evaluation.representations import measure_run as measure_alignment
    from ..tasks import get_task
    from ..training.fit import fit

    if threads:
        torch.set_num_threads(threads)
    rid, started = spec.run_id, time.time()
    where = {"host": socket.gethostname(), "pid": os.getpid(), "threads": torch.get_num_threads(),
             "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
    try:
        run = fit(spec.config, model=_classifier(spec.config, device, dtype), progress=False)
        where["device"] = str(run.model.backbone.device)
        trained = time.time()
        run.save(folder)
        # threads: the count this worker was given (or torch's), not a probe for cores other workers use;
        # fp32 PyTorch always, so a sweep's numbers never depend on which engine `auto` picks on this machine
        results = evaluate(run, spec.languages, split=spec.split, progress=False, threads=threads or None,
                           precision="fp32", engine="torch", limit_per_language=spec.limit_per_language)
        io.write_json(folder / RESULTS, results)
        if spec.alignment and get_task(spec.config.task).parallel_split is not None:
            # now, while a fine-tuned run's weights are here: a snapshot of the store leaves them behind
            io.write_json(folder / ALIGNMENT_FILE, measure_alignment(run, None, spec.alignment))
    except Exception as exc:  # recorded, and the sweep goes on; KeyboardInterrupt still stops it
        error = f"{type(exc).__name__}: {exc}"
        io.write_json(folder / FAILED, {"status": "failed", "run_id": rid, "error": error,
                                        "traceback": traceback.format_exc(), "spec": spec.to_dict(),
                                        "started": started, "finished": time.time(), **where})
        return {"run_id": rid, "status": "failed", "error": error, "seconds": time.time() - started}
    finished = time.time()
    from .. import __version__

    io.write_json(folder / DONE, {
        "status": "done", "run_id": rid, "spec": spec.to_dict(), "started": started, "finished": finished,
        "seconds": {"train": trained - started, "evaluate": finished - trained, "total": finished - started},
        "xlprompt": __version__, **where})
    return {"run_id": rid, "status": "done", "seconds": finished - started,
            "accuracy": results["mean"].get("accuracy")}


def gpu_slots(workers: int, gpus: int) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value of each local worker: worker i sees GPU i mod `gpus` (one GPU per
    worker when workers <= gpus, the default); none without GPUs."""
    return [str(i % gpus) for i in range(workers)] if gpus else []


def default_workers(device) -> int:
    """Local workers when --workers is not given: one per visible GPU when runs go to CUDA, else 1."""
    from ..execution.device import cuda_count
    from ..execution import check_device

    return max(1, cuda_count()) if check_device(device).type == "cuda" else 1


def _init_worker(threads: int, slots=None) -> None:
    """Pool worker setup: its share of the cores, its own GPU (a CUDA_VISIBLE_DEVICES slot taken from the
    `slots` queue before CUDA starts in this process), and death with the sweep process (Linux), so a killed
    sweep leaves stale locks behind rather than orphans still writing into the store."""
    if slots is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = slots.get(timeout=60)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    import torch

    torch.set_num_threads(threads)


class InlineBackend:
    """Runs in this process, one at a time: no start-up cost, and tasks registered in-process work."""

    capacity = 1

    def __init__(self, device=None, dtype=None):
        self.device, self.dtype = device, dtype

    def submit(self, spec_dict: dict, store_dir: str) -> Future:
        fut: Future = Future()
        fut.set_result(execute_run(spec_dict, store_dir, device=self.device, dtype=self.dtype))
        return fut

    def close(self) -> None:
        pass


class PoolBackend:
    """Spawned worker processes (spawn: no fork of a process holding torch threads), each pinned to its
    own GPU slot when `slots` (gpu_slots) are given; a pinned worker's runs use its one visible GPU."""

    def __init__(self, workers: int, threads: int, device=None, dtype=None, slots: list[str] | None = None):
        self.capacity, self.threads = workers, threads
        self.slots = list(slots or [])
        self.device = "cuda" if self.slots else device
        self.dtype = dtype
        self._pool = self._make()

    def _make(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        queue = None
        if self.slots:  # a fresh pool (also after a worker died) hands out every slot again
            queue = context.Queue()
            for slot in self.slots:
                queue.put(slot)
        return ProcessPoolExecutor(self.capacity, mp_context=context,
                                   initializer=_init_worker, initargs=(self.threads, queue))

    def submit(self, spec_dict: dict, store_dir: str) -> Future:
        return self._pool.submit(execute_run, spec_dict, store_dir, None, self.device, self.dtype)

    def restart(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = self._make()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class SweepResult:
    store: Path
    total: int
    done: list[str] = field(default_factory=list)       # finished by this sweep
    skipped: list[str] = field(default_factory=list)    # done before (or by another process meanwhile)
    failed: dict[str, str] = field(default_factory=dict)  # run id -> error
    seconds: float = 0.0
    frame: object = None                                # the store's table after the final rebuild

    @property
    def complete(self) -> bool:
        return not self.failed and len(self.done) + len(self.skipped) == self.total


def _specs(grid_or_specs) -> list[RunSpec]:
    if isinstance(grid_or_specs, (str, Path, dict)):
        return expand_grid(grid_or_specs)
    specs, seen = [], set()
    for s in grid_or_specs:
        s = s if isinstance(s, RunSpec) else RunSpec.from_dict(s)
        if s.run_id not in seen:
            seen.add(s.run_id)
            specs.append(s)
    return specs


def plan(specs: list[RunSpec], store_dir: str | Path) -> dict[str, str]:
    """run id -> done | failed | incomplete | todo, from the store as it is now."""
    out = {}
    for s in specs:
        folder = runs_dir(store_dir) / s.run_id
        out[s.run_id] = ("done" if (folder / DONE).is_file() else "failed" if (folder / FAILED).is_file()
                         else "incomplete" if folder.exists() else "todo")
    return out


def _make_backend(backend: str, workers: int | None, address: str | None, num_cpus: float | None,
                  num_gpus: float | None = None, device=None, dtype=None):
    from ..execution.device import cuda_count
    from ..execution import check_device

    if backend == "ray":
        from .ray_backend import RayBackend  # imported only here: the local backend never needs Ray

        return RayBackend(execute_run, address=address, workers=workers, num_cpus=num_cpus, num_gpus=num_gpus,
                          device=device, dtype=dtype)
    if backend != "local":
        raise XlpromptError(f"Unknown backend {backend!r}: use {' or '.join(BACKENDS)}.")
    if address or num_gpus:
        raise XlpromptError("--address and --num-gpus are for --backend ray (local workers take one GPU each).")
    workers = workers or default_workers(device)
    if workers <= 1:
        return InlineBackend(device, dtype)
    on_gpu = check_device(device).type == "cuda" and str(device or "auto").lower() in ("auto", "cuda")
    slots = gpu_slots(workers, cuda_count()) if on_gpu else None
    return PoolBackend(workers, max(1, available_cores() // workers), device, dtype, slots)


def run_sweep(grid_or_specs, store_dir: str | Path, backend: str = "local", workers: int | None = None,
              address: str | None = None, progress: bool = True, num_cpus: float | None = None,
              poll_seconds: float = 2.0, num_gpus: float | None = None, device=None, dtype=None) -> SweepResult:
    """Run every run of a grid (file, dict or RunSpecs) that the store does not hold yet.

    workers: local processes (None: one per visible GPU when runs go to CUDA, else 1 = this process; each
    worker is pinned to its own GPU); for Ray, the most tasks in flight (None: the cluster's CPUs /
    num_cpus, or GPUs / num_gpus). `device`/`dtype`: how runs execute (device.py). Runs locked by
    another live process are waited for (and taken over if that process dies), so when this returns every run is done or failed. The store table is updated
    after each run and rebuilt from the run folders at the end.
    """
    from ..execution import check_device
    from .progress import SweepProgress

    check_device(device, dtype)  # a device this machine lacks fails before the store is touched
    store = Path(store_dir)
    runs_dir(store).mkdir(parents=True, exist_ok=True)
    specs = _specs(grid_or_specs)
    # one model at a time, one seed at a time (an interrupted sweep has whole seeds of every arm), and within
    # a seed the frozen runs first, so a worker's cached backbone serves as many runs as possible
    order = {m: i for i, m in enumerate(dict.fromkeys(s.config.model for s in specs))}
    specs.sort(key=lambda s: (order[s.config.model], s.config.seed, not s.config.freeze_model))
    states = plan(specs, store)
    result = SweepResult(store=store, total=len(specs))
    result.skipped = [rid for rid, st in states.items() if st == "done"]
    queue = deque(s for s in specs if states[s.run_id] != "done")
    retrying = [rid for rid, st in states.items() if st == "failed"]
    started = time.time()
    runner = _make_backend(backend, workers, address, num_cpus, num_gpus, device, dtype) if queue else None
    inflight: dict[Future, RunSpec] = {}
    waiting: dict[str, RunSpec] = {}  # held by another process
    with SweepProgress(len(specs), len(result.skipped), runner.capacity if runner else 1, progress) as bar:
        if retrying:
            bar.note(f"retrying {len(retrying)} run(s) that failed before: {', '.join(retrying[:10])}"
                     + (" …" if len(retrying) > 10 else ""))
        try:
            while queue or inflight or waiting:
                while queue and len(inflight) < runner.capacity:
                    spec = queue.popleft()
                    bar.started(spec)
                    inflight[runner.submit(spec.to_dict(), str(store))] = spec
                finished = wait(list(inflight), timeout=1.0, return_when=FIRST_COMPLETED)[0] \
                    if inflight else []
                broken = False
                for fut in finished:
                    spec = inflight.pop(fut)
                    try:
                        outcome = fut.result()
                    except BrokenProcessPool as exc:  # a worker died (e.g. out of memory): lock is stale
                        outcome = {"run_id": spec.run_id, "status": "failed", "error": f"worker died: {exc}"}
                        broken = True
                    except Exception as exc:  # Ray task or worker errors
                        outcome = {"run_id": spec.run_id, "status": "failed",
                                   "error": f"{type(exc).__name__}: {exc}"}
                    _record(outcome, spec, result, waiting, store, bar)
                if broken:  # every future of the dead pool has failed by now; start a fresh one
                    runner.restart()
                if not inflight and waiting:
                    time.sleep(poll_seconds)
                for rid, spec in list(waiting.items()):
                    outcome = _resolved_elsewhere(store, rid, started)
                    if outcome is not None:
                        del waiting[rid]
                        if outcome["status"] == "requeue":  # its holder died or let go: ours now
                            queue.append(spec)
                        else:
                            _record(outcome, spec, result, waiting, store, bar)
                bar.waiting(len(waiting))
        finally:
            if runner is not None:
                runner.close()
            _BACKBONES.clear()  # inline runs cached it in the caller's process: give the memory back
    result.frame = rebuild_store(store)
    result.seconds = time.time() - started
    return result


def _resolved_elsewhere(store: Path, rid: str, since: float) -> dict | None:
    """What became of a run another process held: None while it still holds it."""
    folder, lock = runs_dir(store) / rid, RunLock(runs_dir(store) / f"{rid}.lock")
    if (folder / DONE).is_file():
        return {"run_id": rid, "status": "skipped"}
    if lock.path.exists() and not lock.is_stale():
        return None
    try:  # failed during this sweep in the other process: report it, do not run it a second time
        failed = io.read_json(folder / FAILED)
        if failed.get("finished", 0) >= since:
            return {"run_id": rid, "status": "failed", "error": failed.get("error", "failed elsewhere")}
    except (OSError, ValueError):
        pass
    return {"run_id": rid, "status": "requeue"}


def _record(outcome: dict, spec: RunSpec, result: SweepResult, waiting: dict, store: Path, bar) -> None:
    status, rid = outcome["status"], spec.run_id
    if status == "done":
        result.done.append(rid)
        update_store(store, [rid])
    elif status == "skipped":
        result.skipped.append(rid)
    elif status == "locked":
        waiting[rid] = spec
    else:
        result.failed[rid] = outcome.get("error", "unknown error")
    bar.finished(spec, outcome)
