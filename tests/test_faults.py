"""Injected faults while files are written: the disk fills (ENOSPC) mid-write or at the rename, or the folder
turns read-only (EROFS). Each time: one clear XlpromptError, the previous complete files unchanged byte for
byte, no temporary file left, and a rerun completes. Also a sweep store rebuild killed with SIGKILL."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from xlprompt import TrainConfig, fit, load
from xlprompt.data import token_cache as tc
from xlprompt.cli import app
from xlprompt.core.errors import WriteFailed, XlpromptError
from xlprompt.evaluation.evaluate import write_results
from xlprompt.experiments.store import RESULTS_FILE, rebuild_store
from xlprompt.prompts.config import InputPromptConfig

from conftest import tiny_tokenizer


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


class Faults:
    """Patch the calls a write goes through so that those on matching paths fail with an OSError."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.hits = monkeypatch, []

    def _fail(self, code: int, where: str):
        self.hits.append(where)
        raise OSError(code, os.strerror(code), where)

    def disk_full_at_rename(self, name: str):
        real = os.replace

        def replace(src, dst, *a, **k):
            if Path(dst).name == name:
                self._fail(errno.ENOSPC, str(dst))
            return real(src, dst, *a, **k)
        self.monkeypatch.setattr(os, "replace", replace)

    def disk_full_while_writing(self, name: str):
        """fsync of the temporary file fails after its bytes were written (ENOSPC surfaces there on many
        file systems): the half-written temporary file exists when the error comes."""
        real = os.fsync

        def fsync(fd):
            if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{name}."):
                self._fail(errno.ENOSPC, name)
            return real(fd)
        self.monkeypatch.setattr(os, "fsync", fsync)

    def read_only(self, folder: Path):
        """No new file, no rename, no unlink inside `folder` (root ignores chmod, so patch instead)."""
        folder = folder.resolve()
        inside = lambda p: Path(p).resolve().parent == folder or Path(p).resolve() == folder
        real_mkstemp, real_replace, real_unlink = tempfile.mkstemp, os.replace, Path.unlink

        def mkstemp(*a, dir=None, **k):
            if dir is not None and inside(Path(dir) / "x"):
                self._fail(errno.EROFS, str(dir))
            return real_mkstemp(*a, dir=dir, **k)

        def replace(src, dst, *a, **k):
            if inside(dst):
                self._fail(errno.EROFS, str(dst))
            return real_replace(src, dst, *a, **k)

        def unlink(self_, missing_ok=False):
            if inside(self_) and self_.exists():
                self._fail(errno.EROFS, str(self_))
            return real_unlink(self_, missing_ok=missing_ok)
        self.monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        self.monkeypatch.setattr(os, "replace", replace)
        self.monkeypatch.setattr(Path, "unlink", unlink)


@pytest.fixture
def faults(monkeypatch):
    return Faults(monkeypatch)


@pytest.fixture(scope="module")
def two_runs(tiny_model_dir, toy_task):
    model = str(tiny_model_dir("bert"))
    make = lambda seed: fit(TrainConfig(task="toy", model=model, method=InputPromptConfig(prompt_length=2), epochs=1,
                                        batch_size=16, lr=0.05, seed=seed), progress=False)
    return make(0), make(1)


def logits(run) -> np.ndarray:
    from xlprompt.data.collate import encode_texts
    from xlprompt.evaluation.evaluate import predict_encoded

    texts = ["alpha w1 w2", "beta w3", "w5 alpha"]
    return predict_encoded(run.model, encode_texts(run.model.backbone.tokenizer, texts, [0] * 3, 128))


@pytest.mark.parametrize("fault", ["rename", "write"])
def test_run_save_when_the_disk_fills(two_runs, tmp_path, faults, fault):
    first, second = two_runs
    out = first.save(tmp_path / "run")
    before = snapshot(out)
    (faults.disk_full_at_rename if fault == "rename" else faults.disk_full_while_writing)("head.safetensors")
    with pytest.raises(XlpromptError, match=r"Could not write .*head\.safetensors \(No space left on device\)"):
        second.save(out)
    assert faults.hits and temp_files(out) == []
    after = snapshot(out)
    assert "run.json" not in after  # marked incomplete while a mix of old and new files is there
    for name in ("head.safetensors", "curve.json", "config.json"):  # not reached or refused: the old bytes
        assert after[name] == before[name], name
    assert set(after) <= set(before)
    with pytest.raises(XlpromptError, match="still being written or training crashed"):
        load(out)
    faults.monkeypatch.undo()
    second.save(out)  # the rerun completes
    np.testing.assert_allclose(logits(load(out)), logits(second), atol=1e-6)


def test_run_save_into_a_read_only_folder_leaves_the_old_run_loadable(two_runs, tmp_path, faults):
    first, second = two_runs
    out = first.save(tmp_path / "run")
    before = snapshot(out)
    faults.read_only(out)
    with pytest.raises(WriteFailed, match="Read-only file system"):
        second.save(out)
    assert snapshot(out) == before and temp_files(out) == []
    np.testing.assert_allclose(logits(load(out)), logits(first), atol=1e-6)  # still the complete first run
    faults.monkeypatch.undo()
    second.save(out)
    np.testing.assert_allclose(logits(load(out)), logits(second), atol=1e-6)


def test_evaluation_results_write(two_runs, tmp_path, faults):
    first, second = two_runs
    out = tmp_path / "results.json"
    old, new = first.evaluate("all", progress=False), second.evaluate("all", progress=False)
    write_results(old, out)
    before = snapshot(tmp_path)
    faults.disk_full_while_writing("results.json")
    with pytest.raises(XlpromptError, match=r"Could not write .*results\.json"):
        write_results(new, out)
    assert snapshot(tmp_path) == before and temp_files(tmp_path) == []  # the JSON failed first: both old
    faults.monkeypatch.undo()
    faults.disk_full_at_rename("results.csv")
    with pytest.raises(XlpromptError, match=r"results\.csv"):
        write_results(new, out)
    after = snapshot(tmp_path)
    # the new JSON is whole, and no CSV of the older results stands beside it (issue 27)
    assert "results.csv" not in after and temp_files(tmp_path) == []
    written = json.loads(after["results.json"])
    assert {k: v for k, v in written.items() if k != "results_id"} == json.loads(json.dumps(new))  # whole
    faults.monkeypatch.undo()
    write_results(new, out)
    assert pd.read_csv(tmp_path / "results.csv")["accuracy"].tolist() == \
        [m["accuracy"] for m in new["languages"].values()]


def test_cli_evaluate_on_a_full_disk_is_one_error_line(two_runs, tmp_path, faults):
    run_dir = two_runs[0].save(tmp_path / "run")
    faults.disk_full_at_rename("r.json")
    res = CliRunner().invoke(app, ["evaluate", str(run_dir), "--langs", "all", "--out", str(tmp_path / "r.json")])
    text = " ".join(res.output.split())
    assert res.exit_code == 2 and "error: Could not write" in text and "No space left on device" in text
    assert "Traceback" not in text and not (tmp_path / "r.json").exists() and temp_files(tmp_path) == []
    faults.monkeypatch.undo()
    res = CliRunner().invoke(app, ["evaluate", str(run_dir), "--langs", "all", "--out", str(tmp_path / "r.json")])
    assert res.exit_code == 0 and (tmp_path / "r.json").exists()


@pytest.mark.parametrize("fault", ["rename", "write", "meta", "read_only"])
def test_token_cache_entry_write(toy_task, tmp_path, faults, fault):
    tc.clear_memory()
    tok = tiny_tokenizer("encoder")
    old_frame, frame = toy_task.load("test", "eng_Latn"), toy_task.load("test", "deu_Latn")
    cache = tc.TokenCache(tmp_path / "tokens")
    cache.encode(toy_task, tok, old_frame, 128)  # a previous complete entry
    before = {p.relative_to(cache.root): p.read_bytes() for p in cache.root.rglob("*") if p.is_file()}
    key = tc.cache_key(toy_task, tok, frame, 128)
    data_path, meta_path = cache.paths(key)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    if fault == "rename":
        faults.disk_full_at_rename(data_path.name)
    elif fault == "write":
        faults.disk_full_while_writing(data_path.name)
    elif fault == "meta":  # the tensors were written, their metadata (written last) was not
        faults.disk_full_at_rename(meta_path.name)
    else:
        faults.read_only(data_path.parent)
    tc.clear_memory()
    with pytest.warns(UserWarning, match="not written"):
        encoded = cache.encode(toy_task, tok, frame, 128)
    assert encoded.token_ids == toy_task.encode(tok, frame, 128).token_ids  # evaluation goes on, just slower
    assert faults.hits and temp_files(cache.root) == [] and cache.stats["writes"] == 1  # the old entry only
    for rel, data in before.items():
        assert (cache.root / rel).read_bytes() == data
    assert cache.read(key) is None  # no entry, or tensors without metadata: a miss, never a wrong hit
    faults.monkeypatch.undo()
    tc.clear_memory()
    again = tc.TokenCache(cache.root)
    again.encode(toy_task, tok, frame, 128)
    assert again.stats["writes"] == 1 and again.read(key) is not None


# ------------------------------------------------------------------------------------------ the store

def fake_done_run(store: Path, rid: str, seed: int, accuracy: dict[str, float]) -> dict:
    """A done run folder as the runner writes it (the files the store reads), and the rows it must give."""
    folder = store / "runs" / rid
    folder.mkdir(parents=True)
    config = {"task": "sib200", "model": "m", "method": {"type": "input_prompt", "prompt_length": 4, "reparam": "none",
                                                         "init": "random"},
              "shots": 8, "seed": seed, "freeze_model": True, "lr": 0.01, "epochs": 2, "batch_size": 8,
              "train_language": "eng_Latn"}
    spec = {"config": config, "languages": sorted(accuracy), "split": "test"}
    results = {"train_language": "eng_Latn", "split": "test",
               "languages": {code: {"accuracy": acc, "macro_f1": acc / 2, "n": 100} for code, acc in accuracy.items()}}
    files = {"run.json": {"info": {"best_epoch": 1, "train_seconds": 3.5 + seed, "trained_parameters": 1000},
                          "parameters": {"backbone": 5000}},
             "curve.json": [{"epoch": 0, "dev_accuracy": 0.3}, {"epoch": 1, "dev_accuracy": 0.4 + seed / 100}],
             "results.json": results, "spec.json": spec,
             "done.json": {"status": "done", "run_id": rid, "spec": spec, "finished": 1000.0 + seed}}
    for name, obj in files.items():
        (folder / name).write_text(json.dumps(obj))
    return {(rid, code): {"accuracy": acc, "macro_f1": acc / 2, "n": 100, "seed": seed, "best_epoch": 1,
                          "dev_accuracy": 0.4 + seed / 100, "train_seconds": 3.5 + seed, "prompt_length": 4,
                          "trainable_parameters": 1000, "backbone_parameters": 5000, "finished": 1000.0 + seed}
            for code, acc in accuracy.items()}


def check_rows(frame: pd.DataFrame, expected: dict) -> None:
    """The table against the values written into the run folders by hand (not another store call)."""
    assert sorted(zip(frame["run_id"], frame["language"])) == sorted(expected)
    for row in frame.to_dict("records"):
        for column, value in expected[(row["run_id"], row["language"])].items():
            assert row[column] == pytest.approx(value), (row["run_id"], row["language"], column)
        assert row["method"] == "input_prompt" and row["train_language"] == "eng_Latn" and row["split"] == "test"


@pytest.fixture
def store(tmp_path):
    store = tmp_path / "store"
    expected = {}
    expected.update(fake_done_run(store, "aaa111", 0, {"eng_Latn": 0.9, "deu_Latn": 0.7}))
    expected.update(fake_done_run(store, "bbb222", 1, {"eng_Latn": 0.8, "swh_Latn": 0.25}))
    return store, expected


def test_store_rebuild_and_incremental_against_the_run_folders(store):
    from xlprompt.experiments.store import update_store

    store, expected = store
    check_rows(rebuild_store(store), expected)
    expected.update(fake_done_run(store, "ccc333", 2, {"eng_Latn": 0.5}))
    check_rows(update_store(store, ["ccc333"]), expected)  # added without rereading the others
    results = store / "runs" / "bbb222" / "results.json"  # a run redone with other numbers: rows replaced
    redone = json.loads(results.read_text())
    redone["languages"]["swh_Latn"]["accuracy"] = 0.125
    results.write_text(json.dumps(redone))
    expected[("bbb222", "swh_Latn")]["accuracy"] = 0.125
    check_rows(update_store(store, ["bbb222"]), expected)
    check_rows(pd.read_parquet(store / RESULTS_FILE), expected)
    check_rows(rebuild_store(store), expected)


def test_a_run_of_a_method_this_process_does_not_know_is_still_read(store):
    store, expected = store
    fake_done_run(store, "ddd444", 3, {"eng_Latn": 0.25})
    for name in ("done.json", "spec.json"):  # a plugin's method, not imported here, with an older spelling
        path = store / "runs" / "ddd444" / name
        text = path.read_text().replace('"type": "input_prompt", "prompt_length": 4', '"type": "plugin", "length": 4')
        path.write_text(text)
    frame = rebuild_store(store)
    check_rows(frame[frame["run_id"] != "ddd444"], expected)
    plugin = frame[frame["run_id"] == "ddd444"].to_dict("records")
    assert [(r["method"], r["prompt_length"], r["accuracy"]) for r in plugin] == [("plugin", 4, 0.25)]


@pytest.mark.parametrize("fault", ["rename", "write", "read_only"])
def test_store_rebuild_fault_keeps_the_previous_table(store, faults, fault):
    store, expected = store
    rebuild_store(store)
    before = (store / RESULTS_FILE).read_bytes()
    more = fake_done_run(store, "ccc333", 2, {"eng_Latn": 0.5})
    if fault == "rename":
        faults.disk_full_at_rename(RESULTS_FILE)
    elif fault == "write":
        faults.disk_full_while_writing(RESULTS_FILE)
    else:
        faults.read_only(store)
    with pytest.raises(XlpromptError, match=r"Could not write .*results\.parquet"):
        rebuild_store(store)
    assert (store / RESULTS_FILE).read_bytes() == before and temp_files(store) == []
    faults.monkeypatch.undo()
    check_rows(rebuild_store(store), {**expected, **more})


def test_sigkill_during_the_store_rebuild_loses_nothing(store):
    """A process killed while the Parquet table is half written: the old table stays whole, the next
    rebuild (what every sweep ends with) completes with every done run."""
    store, expected = store
    rebuild_store(store)
    before = (store / RESULTS_FILE).read_bytes()
    more = fake_done_run(store, "ccc333", 2, {"eng_Latn": 0.5, "deu_Latn": 0.1})
    marker = store.parent / "writing"
    # the child writes the new table's temporary file, then stops there until it is killed
    child = ("import os, sys, time, pandas as pd; from pathlib import Path\n"
             "real = pd.DataFrame.to_parquet\n"
             "def slow(self, path, *a, **k):\n"
             "    real(self, path, *a, **k)\n"
             "    with open(path, 'r+b') as fh: fh.truncate(os.path.getsize(path) // 2)  # half written\n"
             "    Path(sys.argv[2]).write_text(str(path)); time.sleep(120)\n"
             "pd.DataFrame.to_parquet = slow\n"
             "from xlprompt.experiments.store import rebuild_store; rebuild_store(sys.argv[1])\n")
    proc = subprocess.Popen([sys.executable, "-c", child, str(store), str(marker)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the rebuild ended or stalled"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert Path(marker.read_text()).exists()  # killed with the half-written temporary file on disk
    assert (store / RESULTS_FILE).read_bytes() == before
    check_rows(pd.read_parquet(store / RESULTS_FILE), expected)  # the old table, whole
    from xlprompt.experiments import load_store

    check_rows(load_store(store), {**expected, **more})  # notices the new run, rebuilds, nothing lost
    (store / RESULTS_FILE).unlink()  # a first rebuild killed the same way leaves no table, not a torn one
    proc = subprocess.Popen([sys.executable, "-c", child, str(store), str(marker) + "2"])
    try:
        deadline = time.monotonic() + 120
        while not Path(str(marker) + "2").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the rebuild ended or stalled"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (store / RESULTS_FILE).exists()
    check_rows(load_store(store), {**expected, **more})


def test_written_files_are_readable_by_others_and_locks_are_never_seen_empty(tmp_path, monkeypatch):
    import stat

    from xlprompt.core import io
    from xlprompt.experiments.lock import RunLock

    old = os.umask(0o022)
    try:
        io.write_json(tmp_path / "a.json", {"x": 1})
        io.save_tensors(tmp_path / "t.safetensors", {"w": __import__("torch").zeros(2)})
    finally:
        os.umask(old)
    for name in ("a.json", "t.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    # a lock is linked into place whole: the moment it exists it names its owner
    seen = []
    real_link = os.link

    def link_and_look(src, dst):
        real_link(src, dst)
        seen.append(json.loads(Path(dst).read_text()))

    monkeypatch.setattr(os, "link", link_and_look)
    lock = RunLock(tmp_path / "r.lock")
    assert lock.acquire()
    try:
        assert seen and seen[0]["pid"] == os.getpid()
        assert not RunLock(tmp_path / "r.lock").acquire()  # held by a live process
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staged file left
    finally:
        lock.release()
