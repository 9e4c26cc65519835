"""Sweeps: grid expansion and run ids, the local runner end to end, resume after a real SIGKILL, failed runs,
the store, and the Ray backend on a local Ray. Tiny random models; SIB-200 (packaged) where a subprocess
runs, because tasks registered in-process (the toy task) do not exist there."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from xlprompt.cli import app
from xlprompt.core.errors import XlpromptError
from xlprompt.experiments import expand_grid, load_store, rebuild_store, run_sweep
from xlprompt.experiments.store import RESULTS_FILE, columns, update_store

RUN_FILES = {"spec.json", "config.json", "curve.json", "run.json", "prompt.safetensors", "head.safetensors",
             "results.json", "done.json"}
LANGS = ["deu_Latn", "eng_Latn"]


def sib_grid(model_dir, seeds=(0, 1), **extra) -> dict:
    axes = {"seed": list(seeds), **extra.pop("axes", {})}
    fixed = {"task": "sib200", "model": str(model_dir), "shots": 2, "epochs": 1, "languages": LANGS,
             "prompt_length": 2, **extra}
    return {"fixed": fixed, "axes": axes}


def toml_text(grid: dict) -> str:
    def value(v):
        return json.dumps(v)  # JSON scalars and lists of strings/numbers are valid TOML

    lines = []
    for table in ("fixed", "axes"):
        lines.append(f"[{table}]")
        lines += [f"{k} = {value(v)}" for k, v in grid[table].items()]
    return "\n".join(lines) + "\n"


# ---- grid expansion and run ids -------------------------------------------------------------------------

def test_expansion_is_the_product_and_ids_are_stable():
    grid = {"fixed": {"task": "sib200", "epochs": 1, "languages": ["eng_Latn", "deu_Latn"]},
            "axes": {"prompt_length": [1, 4], "shots": [8, "all"], "seed": [0, 1]}}
    specs = expand_grid(grid)
    assert len(specs) == 8 and len({s.run_id for s in specs}) == 8
    assert {s.config.shots for s in specs} == {8, None}
    assert {s.config.method.prompt_length for s in specs} == {1, 4}
    # key order, language order, aliases, ints for floats and explicit defaults do not change the ids
    reordered = {"axes": {"seed": [0, 1], "shots": [8, "all"], "length": [1, 4]},
                 "fixed": {"languages": ["deu_Latn", "eng_Latn"], "lr": 0.005, "epochs": 1, "task": "sib200",
                           "freeze": True, "method": "prompt", "warmup": 0.1, "split": "test"}}
    assert {s.run_id for s in expand_grid(reordered)} == {s.run_id for s in specs}
    changed = {**grid, "fixed": {**grid["fixed"], "lr": 0.01}}
    assert not {s.run_id for s in expand_grid(changed)} & {s.run_id for s in specs}
    other_langs = {**grid, "fixed": {**grid["fixed"], "languages": ["eng_Latn"]}}
    assert not {s.run_id for s in expand_grid(other_langs)} & {s.run_id for s in specs}


def test_axes_blocks_are_a_union_without_duplicates():
    grid = {"fixed": {"task": "sib200", "epochs": 1},
            "axes": [{"method": ["deep"], "prompt_length": [16], "seed": [0, 1]},
                     {"method": ["finetune", "head"], "seed": [0, 1]},
                     {"method": ["deep"], "prompt_length": [16, 32], "seed": [0]}]}
    specs = expand_grid(grid)
    kinds = sorted((s.config.method.type, getattr(s.config.method, "prompt_length", None), s.config.seed) for s in specs)
    assert kinds == [("deep_prompt", 16, 0), ("deep_prompt", 16, 1), ("deep_prompt", 32, 0),
                     ("finetune", None, 0), ("finetune", None, 1), ("head", None, 0), ("head", None, 1)]
    assert all(s.config.freeze_model is False for s in specs if s.config.method.type == "finetune")


@pytest.mark.parametrize("grid,message", [
    ({"fixed": {"promt_length": 3}}, "promt_length"),                       # typo: named, valid keys listed
    ({"axes": {"seed": []}}, "empty"),
    ({"axes": {"seed": 3}}, "must be a list"),
    ({"axes": {"shots": [0]}}, "shots"),
    ({"axes": {"lr": ["fast"]}}, "lr"),
    ({"fixed": {"seed": 1}, "axes": {"seed": [1, 2]}}, "both"),
    ({"fixed": {"method": "finetune", "reparam": "mlp"}}, "reparam"),      # option no method of the grid takes
    ({"fixed": {"method": "finetune", "freeze": True}}, "method='finetune'.*trains the model"),       # invalid combination
    ({"fixed": {"languages": ["eng_Latn", "deu_Latx"]}}, "deu_Latx"),       # caught before any training
    ({"fixed": {}, "grid": {}}, "top-level"),
])
def test_bad_grids_are_clear_errors(grid, message):
    with pytest.raises(XlpromptError, match=message):
        expand_grid(grid)
    if message == "promt_length":
        with pytest.raises(XlpromptError, match="prompt_length"):
            expand_grid(grid)


def test_grid_files_toml_yaml_and_shipped(tmp_path):
    (tmp_path / "g.toml").write_text('[fixed]\ntask = "sib200"\n[axes]\nseed = [0, 1]\n')
    (tmp_path / "g.yaml").write_text("fixed:\n  task: sib200\naxes:\n  seed: [0, 1]\n")
    try:
        import yaml  # noqa: F401
        assert [s.run_id for s in expand_grid(tmp_path / "g.toml")] == \
            [s.run_id for s in expand_grid(tmp_path / "g.yaml")]
    except ImportError:
        with pytest.raises(XlpromptError, match="PyYAML"):
            expand_grid(tmp_path / "g.yaml")
    with pytest.raises(XlpromptError, match="TOML"):
        (tmp_path / "bad.toml").write_text("[fixed\n")
        expand_grid(tmp_path / "bad.toml")
    grids = sorted((Path(__file__).parents[1] / "grids").glob("*.toml"))
    assert {g.name for g in grids} >= {"philippy2024_hub.toml", "philippy2024_e5_cpu.toml",
                                       "tu2022_hub.toml", "tu2022_e5_cpu.toml"}
    for g in grids:
        assert expand_grid(g)


def test_dry_run_lists_runs_and_writes_nothing(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text('[fixed]\ntask = "sib200"\nepochs = 1\n[axes]\nprompt_length = [1, 4]\nseed = [0, 1]\n')
    res = CliRunner().invoke(app, ["sweep", str(grid), "--store", str(tmp_path / "store"), "--dry-run"])
    assert res.exit_code == 0, res.output
    for spec in expand_grid(grid):
        assert spec.run_id in res.output
    assert "4 todo" in res.output and not (tmp_path / "store").exists()
    res = CliRunner().invoke(app, ["sweep", str(tmp_path / "nope.toml"), "--store", str(tmp_path / "s")])
    assert res.exit_code == 2 and "does not exist" in res.output


# ---- local runner, store, failures ----------------------------------------------------------------------

def assert_complete(store: Path, specs) -> pd.DataFrame:
    frame = pd.read_parquet(store / RESULTS_FILE)
    assert set(frame["run_id"]) == {s.run_id for s in specs}
    assert not frame.duplicated(["run_id", "language"]).any()
    assert (frame.groupby("run_id")["language"].nunique() == len(LANGS)).all()
    for s in specs:
        folder = store / "runs" / s.run_id
        assert RUN_FILES <= {p.name for p in folder.iterdir()}, folder
        assert not list(folder.glob("*.tmp")) and not (folder / "failed.json").exists()
    assert not list((store / "runs").glob("*.lock"))
    return frame


def test_local_sweep_end_to_end_then_resume_skips(tiny_model_dir, tmp_path, monkeypatch):
    from xlprompt.models.backbone import Backbone

    torch_threads = __import__("torch").get_num_threads()
    loads = []
    real_load = Backbone.load.__func__
    monkeypatch.setattr(Backbone, "load", classmethod(lambda cls, *a, **k: loads.append(a) or real_load(cls, *a, **k)))
    store = tmp_path / "store"
    specs = expand_grid(sib_grid(tiny_model_dir("xlm-roberta"), axes={"reparam": ["none", "mlp"]}))
    result = run_sweep(specs, store, progress=False)
    assert sorted(result.done) == sorted(s.run_id for s in specs) and result.complete
    assert len(loads) == 1  # four frozen runs of one model share one loaded backbone
    frame = assert_complete(store, specs)
    assert list(frame.columns[:len(columns())]) == list(columns())
    assert set(frame["method"]) == {"input_prompt"} and set(frame["reparam"]) == {"none", "mlp"}
    assert set(frame["language"]) == set(LANGS)
    # each row is what its saved run scores when loaded and evaluated again
    from xlprompt import evaluate, load

    for spec in specs[:2]:
        again = evaluate(load(store / "runs" / spec.run_id), LANGS, progress=False, precision="fp32")
        rows = frame[frame["run_id"] == spec.run_id].set_index("language")
        for code in LANGS:
            assert rows.loc[code, "accuracy"] == pytest.approx(again["languages"][code]["accuracy"])
            assert rows.loc[code, "n"] == again["languages"][code]["n"]
    assert frame["shots"].eq(2).all() and frame["prompt_length"].eq(2).all() and frame["freeze_model"].all()
    assert set(frame["head_lr"]) == {s.config.head_lr for s in specs}  # a "why" setting the report compares
    assert frame["head_weight_decay"].eq(0.0).all()  # no decay asked: the run's weight_decay, 0
    assert (frame["trainable_parameters"] > 0).all() and (frame["backbone_parameters"] > 0).all()
    assert __import__("torch").get_num_threads() == torch_threads  # inline runs leave the caller's threads
    stamps = {p: p.stat().st_mtime_ns for p in store.glob("runs/*/done.json")}
    again = run_sweep(specs, store, progress=False)
    assert again.done == [] and sorted(again.skipped) == sorted(s.run_id for s in specs)
    assert {p: p.stat().st_mtime_ns for p in store.glob("runs/*/done.json")} == stamps
    # a run folder without done.json (crash mid-save: a temp file, a run.json) is cleared and redone
    victim = store / "runs" / specs[1].run_id
    (victim / "done.json").unlink()
    (victim / ".head.safetensors.abc123.tmp").write_bytes(b"half")
    third = run_sweep(specs, store, progress=False)
    assert third.done == [specs[1].run_id] and len(third.skipped) == len(specs) - 1
    assert_complete(store, specs)


def test_runs_that_train_the_model_never_share_a_backbone(tiny_model_dir, tmp_path, monkeypatch):
    from xlprompt.models.backbone import Backbone

    loads = []
    real_load = Backbone.load.__func__
    monkeypatch.setattr(Backbone, "load", classmethod(lambda cls, *a, **k: loads.append(a) or real_load(cls, *a, **k)))
    specs = expand_grid(sib_grid(tiny_model_dir("bert"), axes={"freeze": [False, True]}))
    assert run_sweep(specs, tmp_path / "store", progress=False).complete
    # seeds run in order, frozen first within a seed: per seed one load for the frozen run and a fresh one for
    # the unfrozen run (which empties the cache, so the next seed's frozen run loads again)
    assert len(loads) == 4


def test_store_rebuild_equals_incremental_and_load_store_notices_new_runs(tiny_model_dir, tmp_path):
    store = tmp_path / "store"
    specs = expand_grid(sib_grid(tiny_model_dir("bert"), seeds=(0, 1, 2)))
    run_sweep(specs[:2], store, progress=False)
    (store / RESULTS_FILE).unlink()
    incremental = None
    for s in specs[:2]:
        incremental = update_store(store, [s.run_id])
    rebuilt = rebuild_store(store)
    pd.testing.assert_frame_equal(incremental, rebuilt)
    pd.testing.assert_frame_equal(pd.read_parquet(store / RESULTS_FILE), rebuilt)
    # a run finished by someone else after the table was written: load_store sees it is missing
    stale = pd.read_parquet(store / RESULTS_FILE)
    run_sweep(specs[2:], store, progress=False)
    stale.to_parquet(store / RESULTS_FILE, index=False)
    assert set(load_store(store)["run_id"]) == {s.run_id for s in specs}


def test_failed_run_is_recorded_others_complete_and_it_is_retried(tiny_model_dir, tmp_path):
    store = tmp_path / "store"
    grid = sib_grid(tiny_model_dir("xlm-roberta"), seeds=(0,), axes={"train_language": ["eng_Latn", "xxx_Latn"]})
    specs = expand_grid(grid)  # the training language is only checked when the run trains
    bad = next(s for s in specs if s.config.train_language == "xxx_Latn")
    result = run_sweep(specs, store, progress=False)
    assert list(result.failed) == [bad.run_id] and "xxx_Latn" in result.failed[bad.run_id]
    assert len(result.done) == 1 and not result.complete
    failed = json.loads((store / "runs" / bad.run_id / "failed.json").read_text())
    assert failed["status"] == "failed" and "xxx_Latn" in failed["error"] and "Traceback" in failed["traceback"]
    assert not (store / "runs" / bad.run_id / "done.json").exists()
    assert set(pd.read_parquet(store / RESULTS_FILE)["run_id"]) == {s.run_id for s in specs if s is not bad}
    res = CliRunner().invoke(app, ["store", str(store)])
    assert res.exit_code == 0 and bad.run_id in res.output and "1 failed" in res.output
    again = run_sweep(specs, store, progress=False)  # retried (and fails again), the good run is skipped
    assert list(again.failed) == [bad.run_id] and len(again.skipped) == 1


def test_a_lock_held_by_a_live_process_is_respected_and_a_dead_ones_is_broken(tmp_path):
    from xlprompt.experiments.lock import RunLock

    path = tmp_path / "r.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid, "start": None}))
        assert not RunLock(path).acquire()  # alive
        sleeper.kill()
        sleeper.wait()
        lock = RunLock(path)
        assert lock.acquire()  # its holder is dead: stale, broken, taken
        assert json.loads(path.read_text())["pid"] == os.getpid()
        assert not RunLock(path).acquire()  # held by this live process
        lock.release()
        assert not path.exists()
    finally:
        sleeper.kill()


# ---- resume after a real SIGKILL ------------------------------------------------------------------------

def test_resume_after_sigkill(tiny_model_dir, tmp_path):
    grid_path = tmp_path / "grid.toml"
    grid = sib_grid(tiny_model_dir("xlm-roberta"), seeds=(0, 1, 2, 3), epochs=2)
    grid_path.write_text(toml_text(grid))
    specs = expand_grid(grid_path)
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "xlprompt.cli", "sweep", str(grid_path), "--store", str(store), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    # the same sweep, stopped for good inside its second run (after the first is done): killed there, at a
    # point the test knows rather than one it has to catch by polling
    marker = tmp_path / "second-run-started"
    paused = ("import sys, time; from pathlib import Path\n"
              "marker = Path(sys.argv[1])\n"
              "import xlprompt.experiments.runner as runner\n"
              "real, calls = runner._train_and_evaluate, []\n"
              "def pause(spec, folder, *a, **k):\n"
              "    calls.append(folder.name)\n"
              "    if len(calls) == 2:\n"
              "        marker.write_text(folder.name); time.sleep(300)\n"
              "    return real(spec, folder, *a, **k)\n"
              "runner._train_and_evaluate = pause\n"
              "from xlprompt.cli import app; sys.argv = ['xlprompt', *sys.argv[2:]]; app()\n")
    proc = subprocess.Popen([sys.executable, "-c", paused, str(marker), *cmd[3:]], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline, killed_during = time.monotonic() + 120, None
    try:
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if marker.exists():
            os.kill(proc.pid, signal.SIGKILL)
            done = {p.parent.name for p in store.glob("runs/*/done.json")}
            killed_during = {p.name: sorted(f.name for f in p.iterdir())
                             for p in store.glob("runs/*") if p.is_dir() and p.name not in done}
    finally:
        if proc.poll() is None and killed_during is None:
            proc.kill()
        output = proc.communicate()[0].decode()
    assert killed_during is not None, f"the sweep ended or stalled before it could be killed:\n{output}"
    assert proc.returncode == -signal.SIGKILL
    before = {p.parent.name: p.stat().st_mtime_ns for p in store.glob("runs/*/done.json")}
    assert len(before) == 1 and list(killed_during) == [marker.read_text()]
    print(f"\nkilled with {len(before)}/{len(specs)} runs done; partial folders: {killed_during}; "
          f"locks left: {[p.name for p in store.glob('runs/*.lock')]}")

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    frame = assert_complete(store, specs)
    assert len(frame) == len(specs) * len(LANGS)
    after = {rid: (store / "runs" / rid / "done.json").stat().st_mtime_ns for rid in before}
    assert after == before  # runs done before the kill were not redone
    assert f"{len(before)} done before" in " ".join(rerun.stdout.split())
    for s in specs:
        done = json.loads((store / "runs" / s.run_id / "done.json").read_text())
        assert done["run_id"] == s.run_id and done["spec"] == s.to_dict()
        results = json.loads((store / "runs" / s.run_id / "results.json").read_text())
        assert sorted(results["languages"]) == LANGS


@pytest.mark.slow
def test_two_sweeps_on_one_store_never_run_a_run_twice(tiny_model_dir, tmp_path):
    grid_path = tmp_path / "grid.toml"
    grid_path.write_text(toml_text(sib_grid(tiny_model_dir("xlm-roberta"), seeds=(0, 1, 2, 3))))
    specs = expand_grid(grid_path)
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "xlprompt.cli", "sweep", str(grid_path), "--store", str(store), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    now = [int(" ".join(o.split()).split(" done now")[0].split()[-1]) for o in outputs]
    print(f"\nruns done by each of two concurrent sweeps: {now}")
    assert sum(now) == len(specs), outputs  # each run trained by exactly one of the two
    assert_complete(store, specs)


# ---- worker processes and Ray ---------------------------------------------------------------------------

@pytest.mark.slow
def test_local_worker_processes(tiny_model_dir, tmp_path):
    store = tmp_path / "store"
    specs = expand_grid(sib_grid(tiny_model_dir("xlm-roberta"), seeds=(0, 1)))
    result = run_sweep(specs, store, workers=2, progress=False)
    assert result.complete, result.failed
    assert_complete(store, specs)
    threads = {json.loads((store / "runs" / s.run_id / "done.json").read_text())["threads"] for s in specs}
    assert threads == {max(1, len(os.sched_getaffinity(0)) // 2)}


def test_a_sweep_whose_worker_pool_is_killed_goes_on_and_a_rerun_completes(tiny_model_dir, tmp_path):
    """A worker killed mid-run (out of memory, an operator's kill -9) breaks the process pool: its runs are
    reported failed, the sweep starts a fresh pool and finishes the rest, and a rerun redoes only those."""
    import multiprocessing
    import threading

    store = tmp_path / "store"
    specs = expand_grid(sib_grid(tiny_model_dir("xlm-roberta"), seeds=(0, 1, 2, 3, 4, 5), epochs=2))
    outcome = {}
    sweep = threading.Thread(target=lambda: outcome.update(result=run_sweep(specs, store, workers=2,
                                                                             progress=False)))
    sweep.start()
    killed, deadline = [], time.monotonic() + 180
    while not killed and time.monotonic() < deadline and sweep.is_alive():
        started = [p for p in store.glob("runs/*/spec.json") if not (p.parent / "done.json").exists()]
        workers = multiprocessing.active_children()
        if started and workers:
            for worker in workers:
                os.kill(worker.pid, signal.SIGKILL)
                killed.append(worker.pid)
            killed_at = time.time()
        time.sleep(0.05)
    sweep.join(300)
    assert killed and not sweep.is_alive(), "no run was in progress to kill, or the sweep hung"
    first = outcome["result"]
    assert first.failed and all("worker died" in e for e in first.failed.values())
    assert len(first.done) + len(first.failed) == len(specs)
    started = [json.loads((store / "runs" / rid / "done.json").read_text())["started"] for rid in first.done]
    assert any(t > killed_at for t in started)  # a fresh pool ran the runs still queued at the kill
    again = run_sweep(specs, store, workers=2, progress=False)
    assert again.complete and sorted(again.done) == sorted(first.failed)  # only the killed runs again
    assert_complete(store, specs)


def test_local_backend_does_not_import_ray():
    code = ("import sys; from xlprompt.experiments import runner, grid, store; "
            "from xlprompt import cli; assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ray_backend_on_a_local_ray(tiny_model_dir, tmp_path):
    import ray  # noqa: F401  (the test extra installs it: a broken install fails, never skips)
    store = tmp_path / "store"
    specs = expand_grid(sib_grid(tiny_model_dir("xlm-roberta"), seeds=(0, 1)))
    run_sweep(specs[:1], store, progress=False)  # one done locally first: Ray must skip it (same store)
    stamp = (store / "runs" / specs[0].run_id / "done.json").stat().st_mtime_ns
    result = run_sweep(specs, store, backend="ray", num_cpus=1, progress=False)
    assert result.complete, result.failed
    assert result.skipped == [specs[0].run_id] and result.done == [specs[1].run_id]
    assert_complete(store, specs)
    assert (store / "runs" / specs[0].run_id / "done.json").stat().st_mtime_ns == stamp
    done = json.loads((store / "runs" / specs[1].run_id / "done.json").read_text())
    assert done["pid"] != os.getpid()  # ran in a Ray worker


def test_run_ids_are_stable_across_releases(monkeypatch):
    """A finished sweep must keep its run ids when xlprompt gains an option (else a resumed sweep redoes
    every run): ids are pinned, and a setting declared with `id_neutral` is hashed only off that value."""
    import xlprompt.runs.config as config_mod
    from xlprompt.experiments import grid as grid_mod
    from xlprompt.core.settings import Setting

    grid = {"fixed": {"task": "sib200", "model": "multilingual-e5-small", "languages": ["eng_Latn"],
                      "epochs": 6, "seed": 0}, "axes": {"prompt_length": [10], "shots": [32]}}
    (spec,) = expand_grid(grid)
    assert spec.run_id == "18d7d758c502"  # the id this spec had when stores were first written
    d = spec.to_dict()
    later = {**d, "config": {**d["config"], "new_option": "off",
                             "method": {**d["config"]["method"], "new_knob": 1}}}
    assert grid_mod.run_id(later) != spec.run_id  # unknown to the neutral table: it changes the id
    run_settings, method_settings = config_mod.config_settings, config_mod.method_settings
    monkeypatch.setattr(config_mod, "config_settings", lambda: {
        **run_settings(), "new_option": Setting("new_option", "str", "", "off", id_neutral="off")})
    monkeypatch.setattr(config_mod, "method_settings", lambda kind: {
        **method_settings(kind), "new_knob": Setting("new_knob", "int", "", 1, id_neutral=1, where="method")})
    assert grid_mod.run_id(later) == spec.run_id
    changed = {**later, "config": {**later["config"], "new_option": "on"}}
    assert grid_mod.run_id(changed) != spec.run_id


def test_seeds_run_in_order_frozen_runs_first_within_a_seed_the_cap_applies_and_alignment_is_kept(tiny_model_dir, tmp_path):
    specs = expand_grid(sib_grid(tiny_model_dir("bert"), seeds=(1, 0), axes={"freeze": [False, True]},
                                 limit_per_language=5, alignment=4))
    done = run_sweep(specs, tmp_path / "store", progress=False)
    assert done.complete
    results = json.loads((tmp_path / "store" / "runs" / specs[0].run_id / "results.json").read_text())
    assert {m["n"] for m in results["languages"].values()} == {5} and results["limit_per_language"] == 5
    # alignment is recorded in every run folder while the run's weights are there (fine-tuned ones too)
    for spec in specs:
        found = json.loads((tmp_path / "store" / "runs" / spec.run_id / "alignment.json").read_text())
        assert found["sentences"] == 4 and found["pivot"] == "eng_Latn" and len(found["languages"]) == 20
        assert found["condition"] == "with prompt"  # every run here has a prompt (frozen or not)
        layers = {(r["language"], r["layer"]) for r in found["layers"]}
        assert len(layers) == 20 * (found["layer"] + 1) and all(0 <= r["retrieval"] <= 1 for r in found["layers"])
    order = sorted(((json.loads((tmp_path / "store" / "runs" / rid / "done.json").read_text())["started"],
                     spec.config.seed, spec.config.freeze_model) for spec in specs for rid in [spec.run_id]))
    assert [(seed, frozen) for _, seed, frozen in order] == [(0, True), (0, False), (1, True), (1, False)]


def test_a_per_language_cap_is_part_of_the_run_only_when_set():
    grid = {"fixed": {"task": "sib200", "epochs": 1, "languages": ["eng_Latn"]}, "axes": {"seed": [0]}}
    (plain,) = expand_grid(grid)
    (capped,) = expand_grid({**grid, "fixed": {**grid["fixed"], "limit_per_language": 100}})
    assert plain.limit_per_language is None and "limit_per_language" not in plain.to_dict()
    assert capped.limit_per_language == 100 and capped.run_id != plain.run_id
    assert type(capped).from_dict(capped.to_dict()) == capped
