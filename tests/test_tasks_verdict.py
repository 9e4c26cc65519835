"""Tu et al.'s study on several tasks (issue 29): the grid's runs, the per-task and pooled-over-tasks
statistics on synthetic stores with known effects, and verdict rows that name the method and the task."""
from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xlprompt.analysis import tasks_verdict as TV
from xlprompt.analysis.verdict import verdict_table
from xlprompt.experiments import expand_grid

from test_stats import DTYPES

GRIDS = Path(__file__).parents[1] / "grids"
METRIC = {"xnli": "accuracy", "pawsx": "accuracy", "udpos": "accuracy", "panx": "f1"}


def test_the_tu_grid_has_every_arm_of_every_task_for_three_seeds():
    specs = expand_grid(GRIDS / "findings_tu_e5.toml")
    count = Counter((s.config.task, s.config.method.type) for s in specs)
    for task in ("xnli", "pawsx", "udpos", "panx"):
        assert count[(task, "deep_prompt")] == count[(task, "input_prompt")] == count[(task, "finetune")] == 3
        assert count[(task, "head")] == (3 if task in ("xnli", "pawsx") else 0)  # the probe: sentence pairs
    assert len(specs) == 42 and {s.config.seed for s in specs} == {0, 1, 2}
    for s in specs:
        examples = s.config.shots * (3 if s.config.task == "xnli" else 2 if s.config.task == "pawsx" else 1)
        assert 999 <= examples <= 1000  # the same English budget for every method of a task
        assert s.languages == "all" and s.limit_per_language == 1000 and s.alignment == 200
        if s.config.method.type == "deep_prompt":
            assert s.config.method.prompt_length == (32 if s.config.task == "xnli" else 16)
            assert s.config.freeze_model and not s.config.method.prefix_projection
    deep = expand_grid(GRIDS / "findings_e5_deep.toml")
    assert sorted((s.config.method.prompt_length, s.config.shots or 0, s.config.seed) for s in deep) == sorted(
        (L, shots, seed) for L in (10, 16) for shots in (32, 0) for seed in (0, 1, 2))
    assert all(len(s.languages) == 80 for s in deep)


def task_store(effects: dict, n_languages=30, seeds=(0, 1, 2), noise=0.01, seed=0) -> pd.DataFrame:
    """Per task: fine-tuning, a deep prompt (Tu's length) and an input prompt on `n_languages` languages;
    the deep prompt's score is fine-tuning's plus `effects[task]`, the input prompt's 5 points lower."""
    rng = np.random.default_rng(seed)
    rows = []
    for task, effect in effects.items():
        codes = ["en"] + [f"{task[:2]}{i:02d}" for i in range(n_languages)]
        base = dict(zip(codes, rng.uniform(0.4, 0.8, len(codes))))
        for method, length, shift in (("finetune", None, 0.0), ("deep_prompt", 16, effect),
                                      ("input_prompt", 10, -0.05)):
            for s in seeds:
                cfg = dict(task=task, model="m", method=method, prompt_length=length, shots=1000, seed=s,
                           freeze_model=method != "finetune", reparam="none", init="random", lr=5e-3, epochs=10,
                           train_language="en", split="test", best_epoch=9)
                rid = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
                for code in codes:
                    score = base[code] + shift + rng.normal(0, noise)
                    rows.append({**cfg, "run_id": rid, "language": code, METRIC[task]: score,
                                 "accuracy": score if METRIC[task] == "accuracy" else 0.99, "n": 100})
    frame = pd.DataFrame(rows)
    return frame.astype({k: v for k, v in DTYPES.items() if k in frame})


def test_pooled_effect_weighs_tasks_equally_and_resamples_languages_within_tasks():
    frame = task_store({"xnli": 0.04, "pawsx": 0.0, "udpos": 0.0, "panx": 0.04}, n_languages=30)
    pooled = TV.pooled(frame, n_boot=2000)
    row = pooled[pooled["comparison"] == "deep_vs_finetune"].iloc[0]
    assert row["tasks"] == 4 and row["languages"] == 120 and row["seeds"] == 3
    assert row["effect"] == pytest.approx(0.02, abs=0.003)  # (4 + 4 + 0 + 0) / 4 points
    assert row["ci_low"] > 0.01 and row["ci_high"] < 0.03 and row["seeds_agree"]
    assert row["per_task"]["xnli"] == pytest.approx(0.04, abs=0.005)
    assert row["per_task"]["udpos"] == pytest.approx(0.0, abs=0.005)
    # PAN-X is scored by entity F1, not by its word accuracy (the same for every arm here)
    assert row["per_task"]["panx"] == pytest.approx(0.04, abs=0.005)
    # a task with more languages does not weigh more: the same effects with udpos 3x as wide
    wide = task_store({"xnli": 0.04, "udpos": 0.0}, n_languages=10)
    wider = pd.concat([wide[wide["task"] == "xnli"], task_store({"udpos": 0.0}, n_languages=30, seed=5)])
    row = TV.pooled(wider, n_boot=500)
    assert row[row["comparison"] == "deep_vs_finetune"]["effect"].item() == pytest.approx(0.02, abs=0.004)
    # no effect anywhere: the interval spans zero
    none = TV.pooled(task_store({"xnli": 0.0, "pawsx": 0.0, "udpos": 0.0}, noise=0.03), n_boot=2000)
    row = none[none["comparison"] == "deep_vs_finetune"].iloc[0]
    assert row["ci_low"] < 0 < row["ci_high"]


def test_verdict_rows_name_the_method_and_the_task():
    frame = task_store({"xnli": 0.04, "pawsx": 0.04, "udpos": -0.03, "panx": 0.0})
    verdict = verdict_table(frame, None, n_boot=1000)["verdict"]
    deep = verdict[verdict["claim"] == "Prompt tuning transfers better than fine-tuning (Tu): deep prompt"]
    per_task = {row.setting.split(" (")[0]: row.verdict for row in deep.itertuples() if "pooled" not in row.setting}
    assert per_task == {"XNLI": "holds", "PAWS-X": "holds", "UD POS": "does not hold", "PAN-X": "undecided"}
    pooled = deep[deep["setting"].str.startswith("pooled over")]
    assert all("deep prompt L=16 (MF) vs fine-tuning" in s for s in deep["setting"] if not s.startswith("pooled"))
    assert pooled["setting"].item().endswith("deep prompt (MF; Tu's length per task) vs fine-tuning")
    assert len(pooled) == 1 and "XNLI L=16" in pooled["setting"].item() and "PAN-X" in pooled["setting"].item()
    assert "pts of f1" in deep[deep["setting"].str.startswith("PAN-X")]["number"].item()
    inputs = verdict[verdict["claim"] == "Prompt tuning transfers better than fine-tuning (Tu): input prompt"]
    assert set(inputs["verdict"]) == {"does not hold"} and len(inputs) == 5  # 4 tasks and pooled
    vs_input = verdict[verdict["claim"] == "A deep prompt transfers better than an input prompt"]
    assert len(vs_input) == 5 and all("deep prompt" in s and "input prompt" in s for s in vs_input["setting"])
