"""The beyond-English-only study's statistics on a synthetic store (issue 30's findings)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from xlprompt.analysis import sources

LANGS = [f"l{i:02d}_Latn" for i in range(30)]


def synthetic() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    settings = [("eng_Latn", None, 0.0), ("eng_Latn,zho_Hans", None, 0.01), ("eng_Latn", 1, 0.02),
                ("eng_Latn", 8, 0.08)]
    for method, offset in (("input_prompt", 0.0), ("head", -0.03)):
        for train, k, gain in settings:
            for seed in range(3):
                for i, code in enumerate(LANGS):
                    base = 0.4 + 0.01 * i  # l00 is the worst language under English only
                    rows.append({"run_id": f"{method}{train}{k}{seed}", "method": method, "train_language": train,
                                 "target_shots": k, "target_languages": ",".join(LANGS) if k else None,
                                 "seed": seed, "language": code, "split": "test",
                                 "accuracy": base + offset + gain + rng.normal(0, 0.005)})
    return pd.DataFrame(rows)


def test_gains_over_english_only_per_group_and_against_the_probe(tmp_path):
    frame = synthetic()
    worst = sources.worst_languages(frame, n=10)
    assert worst == LANGS[:10]
    groups = sources.language_groups(LANGS[:25], worst)
    table = sources.gains(frame, groups, n_boot=500)
    k8 = table[(table["method"] == "input prompt") & (table["setting"] == "English + 8 per class")]
    assert set(k8["verdict"]) == {"holds"} and np.allclose(k8["gain"], 0.08, atol=0.01)
    english = table[table["setting"] == sources.ENGLISH]
    assert english["gain"].isna().all() and (english["accuracy_ci_low"] < english["accuracy"]).all()
    versus = sources.against_probe(frame, "study languages", groups["study languages"], n_boot=500)
    assert {r["setting"] for r in versus} == {"English only", "several sources", "English + 1 per class",
                                              "English + 8 per class"}
    assert all(r["verdict"] == "holds" and abs(r["gain"] - 0.03) < 0.01 for r in versus)
    assert sources.plot_k(table, tmp_path / "k.png").stat().st_size > 0
