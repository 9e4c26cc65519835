"""Statistics and the verdict table on synthetic stores: a known effect is detected, no effect is detected
at about the nominal rate, and too few seeds or languages give "undecided"."""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest

from xlprompt.analysis import stats as S
from xlprompt.analysis.report import write_report
from xlprompt.analysis.verdict import UNDECIDED, verdict_table

DTYPES = {"run_id": "string", "task": "string", "model": "string", "method": "string", "prompt_length": "Int64",
          "shots": "Int64", "seed": "Int64", "freeze_model": "boolean", "reparam": "string", "init": "string",
          "lr": "float64", "epochs": "Int64", "train_language": "string", "language": "string",
          "split": "string", "accuracy": "float64", "macro_f1": "float64", "n": "Int64", "best_epoch": "Int64"}


def languages(n):
    return ["eng_Latn"] + [f"l{i:02d}_Latn" for i in range(n)]


def store_frame(effects: dict, n_languages=40, seeds=(0, 1, 2), noise=0.02, seed=0, epochs=5) -> pd.DataFrame:
    """Input-prompt runs at L=10, 32 per class, frozen: `effects` maps a changed setting (a dict of
    columns) to its accuracy shift, added to a per-language base; seed noise is normal(0, noise)."""
    rng = np.random.default_rng(seed)
    codes = languages(n_languages)
    base = dict(zip(codes, rng.uniform(0.5, 0.8, len(codes))))
    rows = []
    for change, shift in [({}, 0.0), *effects]:
        for s in seeds:
            cfg = dict(task="sib200", model="m", method="input_prompt", prompt_length=10, shots=32, seed=s,
                       freeze_model=True, reparam="none", init="random", lr=5e-3, head_lr=5e-2, epochs=epochs,
                       train_language="eng_Latn", split="test", best_epoch=epochs - 1)
            cfg.update(change)
            rid = hashlib.sha1(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
            for code in codes:
                shift_l = shift(code) if callable(shift) else shift
                acc = base[code] + shift_l + rng.normal(0, noise)
                rows.append({**cfg, "run_id": rid, "language": code, "accuracy": acc, "macro_f1": acc, "n": 204})
    return pd.DataFrame(rows).astype(DTYPES)


def hash_bit(code: str) -> bool:
    return bool(int(hashlib.md5(code.encode()).hexdigest(), 16) % 2)


def row_of(table, comparison):
    (row,) = table[table["comparison"] == comparison].to_dict("records")
    return row


def test_a_known_effect_is_detected():
    frame = store_frame([({"freeze_model": False}, -0.05), ({"prompt_length": 1}, 0.03)])
    table = S.comparisons(frame, n_boot=2000)
    mf = row_of(table, "mf")
    assert mf["a"] == "MF" and mf["effect"] == pytest.approx(0.05, abs=0.01)
    assert 0 < mf["ci_low"] < 0.05 < mf["ci_high"] and mf["p_value"] < 1e-4
    assert mf["languages"] == 40 and mf["seeds_a"] == 3 and mf["seed_std_a"] > 0
    length = row_of(table, "length")
    assert (length["a"], length["b"]) == ("L=10", "L=1") and length["ci_high"] < 0
    slopes = S.length_slopes(frame, n_boot=2000)
    assert slopes["effect"].iloc[0] == pytest.approx(-0.03 / np.log2(10), abs=0.005) and slopes["ci_high"].iloc[0] < 0
    verdict = verdict_table(frame, None, n_boot=2000)["verdict"]
    assert verdict.loc[verdict["claim"].str.startswith("Freezing"), "verdict"].tolist() == ["holds"]
    assert verdict.loc[verdict["claim"].str.startswith("Shorter"), "verdict"].tolist() == ["holds"]


def test_no_effect_is_detected_at_about_the_nominal_rate():
    rejected, covered = 0, 0
    draws = 200
    for i in range(draws):
        frame = store_frame([({"freeze_model": False}, 0.0)], n_languages=30, seed=100 + i)
        mf = row_of(S.comparisons(frame, n_boot=400), "mf")
        rejected += mf["p_value"] < 0.05
        covered += mf["ci_low"] <= 0 <= mf["ci_high"]
    # nominal 5 %: with 200 draws a correct test rejects 1-10 % of the time (binomial 99.9 % range)
    assert 0.01 <= rejected / draws <= 0.11
    assert 0.88 <= covered / draws <= 0.99


def test_distance_slope_difference_and_reparam_heterogeneity():
    dist = {code: i / 40 for i, code in enumerate(languages(40))}
    frame = store_frame([({"freeze_model": False}, lambda c: -0.3 * dist[c]),
                         ({"reparam": "mlp"}, lambda c: 0.04 if hash_bit(c) else -0.04)])
    frozen = frame["freeze_model"]
    frame.loc[frozen, "accuracy"] -= [0.1 * dist[c] for c in frame.loc[frozen, "language"]]
    langs = pd.DataFrame({"language": list(dist), **{d: list(dist.values()) for d in S.DISTANCES}})
    slopes = S.distance_slopes(frame, langs, n_boot=1000)
    row = slopes[slopes["distance"] == "featural"].iloc[0]
    # the base accuracies are random per language, so only the difference of the slopes is known: 0.2
    assert row["effect"] == pytest.approx(0.2, abs=0.02) and 0 < row["ci_low"] < 0.2 < row["ci_high"]
    result = verdict_table(frame, langs, n_boot=1000)
    v = result["verdict"]
    assert v.loc[v["claim"].str.startswith("MF reduces"), "verdict"].tolist() == ["holds"]
    assert v.loc[v["claim"].str.startswith("MLP"), "verdict"].tolist() == ["holds"]
    # a uniform reparam effect is not language-dependent
    flat = store_frame([({"reparam": "mlp"}, 0.02)], seed=5)
    v = verdict_table(flat, None, n_boot=500)["verdict"]
    assert v.loc[v["claim"].str.startswith("MLP"), "verdict"].tolist() == ["does not hold"]


def test_verdict_is_undecided_with_too_few_seeds_or_languages(tmp_path):
    few_seeds = store_frame([({"freeze_model": False}, -0.05)], seeds=(0,))
    v = verdict_table(few_seeds, None, n_boot=500)["verdict"]
    mf = v[v["claim"].str.startswith("Freezing")].iloc[0]
    assert mf["verdict"] == UNDECIDED and "seed" in mf["why"]
    few_languages = store_frame([({"freeze_model": False}, -0.05)], n_languages=5)
    mf = verdict_table(few_languages, None, n_boot=500)["verdict"].iloc[0]
    assert mf["verdict"] == UNDECIDED and "languages" in mf["why"]
    # the full report writes the verdict beside the HTML, and flags runs whose best epoch was the last
    frame = store_frame([({"freeze_model": False}, -0.05), ({"shots": 8, "epochs": 12}, -0.1)], n_languages=6,
                        seeds=(0, 1))
    frame.loc[frame["shots"] == 8, "best_epoch"] = 12
    store = tmp_path / "store"
    store.mkdir()
    frame.to_parquet(store / "results.parquet", index=False)
    langs = pd.DataFrame({"language": languages(6), "name": "", "family": "f", "script_name": "Latin",
                          **{d: np.linspace(0, 1, 7) for d in S.DISTANCES}})
    write_report(store, tmp_path / "report", alignment=False, lang_table=langs)
    md = (tmp_path / "report" / "verdict.md").read_text()
    assert "| Freezing the model (MF) improves transfer (Philippy) |" in md and "undecided" in md
    assert "holds |" not in md.replace("does not hold", "")  # 2 seeds, 6 languages: nothing is decided
    assert "Runs stopped too early" in md and md.count("| input prompt |") == 2  # the two 8-shot seeds (methods read as labelled)
    page = (tmp_path / "report" / "report.html").read_text()
    assert "Verdict on the studies" in page and "Stopped too early" in page
    meta = json.loads((tmp_path / "report" / "report.json").read_text())
    assert len(meta["stopped_early"]) == 2 and (tmp_path / "report" / "tables" / "verdict.csv").exists()


def test_stopped_early_means_still_improving():
    """best epoch = last is not enough (a decaying learning rate lets a converged run's dev loss creep down
    to the end); a run is flagged when its dev loss still fell by more than 5 % over the last quarter."""
    from xlprompt.experiments.store import late_dev_gain

    plateau = [{"dev_loss": v} for v in (2.0, 1.0, 0.70, 0.69, 0.689, 0.688, 0.6875, 0.687)]
    falling = [{"dev_loss": v} for v in (2.0, 1.6, 1.3, 1.1, 1.0, 0.9, 0.8, 0.7)]
    assert late_dev_gain(plateau) == pytest.approx((0.688 - 0.687) / 0.688)  # 2 of 8 epochs back
    assert late_dev_gain(falling) == pytest.approx((0.9 - 0.7) / 0.9)
    assert late_dev_gain([{"dev_loss": 1.0}]) is None
    runs = pd.DataFrame({"run_id": ["plateau", "falling", "unknown", "earlier"], "epochs": [8, 8, 8, 8],
                         "best_epoch": [8, 8, 8, 5],
                         "late_dev_gain": [late_dev_gain(plateau), late_dev_gain(falling), None, 0.2]})
    assert S.stopped_early(runs)["run_id"].tolist() == ["falling", "unknown"]


def test_head_from_probe_is_its_own_comparison_and_stays_out_of_the_others():
    """Prompt runs whose head started at the probe are compared with random-head runs, and never averaged
    into the studies' comparisons (here: a length effect measured on random-head runs only)."""
    frame = store_frame([({"head_init": "probe"}, 0.04), ({"prompt_length": 1}, 0.03)])
    frame["head_init"] = frame["head_init"].fillna("random").astype("string")
    table = S.comparisons(frame, n_boot=2000)
    head = row_of(table, "head_init")
    assert (head["a"], head["b"]) == ("head from probe", "random head")
    assert head["effect"] == pytest.approx(0.04, abs=0.01) and head["ci_low"] > 0
    length = row_of(table, "length")
    assert length["effect"] == pytest.approx(0.0 - 0.03, abs=0.01)  # L=10 (random head) vs L=1


def test_arms_are_compared_on_the_seeds_they_share():
    """Seed 1 of MF without a seed-1 no-MF run must not count: the effect is seed 0 against seed 0."""
    frame = store_frame([({"freeze_model": False}, -0.05)], seeds=(0, 1), noise=0.0)
    unfrozen_seed1 = (frame["freeze_model"] == False) & (frame["seed"] == 1)  # noqa: E712
    frame = frame[~unfrozen_seed1].copy()
    frame.loc[frame["freeze_model"] & (frame["seed"] == 1), "accuracy"] -= 0.2  # a bad seed 1 of MF only
    mf = row_of(S.comparisons(frame, n_boot=500), "mf")
    assert mf["effect"] == pytest.approx(0.05, abs=1e-9)
    assert mf["seeds_a"] == 1 and mf["seeds_b"] == 1


def test_alignment_comparison_detects_a_known_gap_with_seeds():
    from xlprompt.analysis import alignment_seeds
    from xlprompt.analysis.verdict import _paired_rows

    rng = np.random.default_rng(0)
    rows = []
    for seed in range(3):
        for i in range(30):
            base = rng.uniform(0.3, 0.8)
            for arm, gap in (("prompt", 0.08), ("finetune", 0.0)):
                rows.append({"run_id": f"{arm}{seed}", "model": "m", "shots": 32, "arm": arm, "seed": seed,
                             "language": f"l{i:02d}", "retrieval": base + gap + rng.normal(0, 0.01), "cosine": 0.5})
    measured = pd.DataFrame(rows)
    table = alignment_seeds.comparisons(measured, n_boot=2000)
    assert len(table) == 1 and table["effect"].item() == pytest.approx(0.08, abs=0.01)
    assert table["ci_low"].item() > 0 and table["languages"].item() == 30
    assert _paired_rows(table, "alignment", "claim", +1)[0]["verdict"] == "holds"
    # fewer than 3 seeds: undecided however large the gap
    two = alignment_seeds.comparisons(measured[measured["seed"] < 2], n_boot=500)
    assert _paired_rows(two, "alignment", "claim", +1)[0]["verdict"] == "undecided"


def test_a_side_run_with_fewer_epochs_is_not_averaged_into_its_shots_arm():
    """The grid trains 8 / 32 / all per class for 30 / 12 / 6 epochs; one extra 2-epoch run on all must not
    move the 'all' arm of the samples-per-class comparison (or of prompt vs head)."""
    rows = []
    for seed in (0, 1, 2):
        for shots, epochs, acc in ((8, 30, 0.60), (32, 12, 0.70), (None, 6, 0.72)):
            for i in range(12):
                rows.append({"run_id": f"{shots}-{seed}", "task": "sib200", "model": "m", "method": "input_prompt",
                             "prompt_length": 10, "shots": shots, "freeze_model": True, "reparam": "none",
                             "init": "random", "lr": 5e-3, "epochs": epochs, "train_language": "eng_Latn",
                             "split": "test", "head_init": "random", "seed": seed, "language": f"l{i:02d}",
                             "accuracy": acc + 0.001 * i})
    side = [{**r, "run_id": "side", "epochs": 2, "accuracy": 0.90} for r in rows if r["shots"] is None and r["seed"] == 0]
    frame = pd.DataFrame(rows + side).astype({"shots": "Int64"})
    table = S.comparisons(frame, n_boot=200)
    widest = table[(table["comparison"] == "shots") & (table["a"] == "all per class") & (table["b"] == "8 per class")]
    assert widest["mean_a"].item() == pytest.approx(0.72 + 0.0055, abs=1e-9)


def test_slopes_use_only_the_seeds_every_arm_has():
    """A seed one arm has alone (here: a far-off seed 3 of the frozen L=10 run, seed 4 of L=1) must not move the
    distance or length slopes, as it does not move the paired comparisons."""
    dist = {code: i / 40 for i, code in enumerate(languages(40))}
    langs = pd.DataFrame({"language": list(dist), **{d: list(dist.values()) for d in S.DISTANCES}})
    frame = store_frame([({"freeze_model": False}, lambda c: -0.3 * dist[c]), ({"prompt_length": 1}, 0.03)])
    extra = frame[frame["seed"] == 0].copy()
    extra = extra[(extra["freeze_model"]) & (extra["prompt_length"].isin([1, 10]))]
    extra["seed"] = np.where(extra["prompt_length"] == 1, 4, 3)
    extra.loc[extra["prompt_length"] == 1, "accuracy"] += 0.2
    extra.loc[extra["prompt_length"] == 10, "accuracy"] -= [0.5 * dist[c] for c in
                                                             extra.loc[extra["prompt_length"] == 10, "language"]]
    extra["run_id"] = extra["run_id"] + "x"
    both = pd.concat([frame, extra], ignore_index=True).astype(DTYPES)
    for f in (lambda fr: S.distance_slopes(fr, langs, n_boot=200), lambda fr: S.length_slopes(fr, n_boot=200)):
        before, after = f(frame), f(both)
        assert after["effect"].tolist() == pytest.approx(before["effect"].tolist())
        assert after["seeds"].tolist() == before["seeds"].tolist()


def test_one_setting_changed_is_compared_with_the_prompt_and_with_the_probe():
    """Issue 15's "why": a prompt differing from the method arm's prompt in one setting (here 2 epochs
    instead of 5) is paired with that prompt and with the head-only probe; a run changing two settings is
    not, and a variant that beats the probe with 3 seeds makes the verdict row hold."""
    frame = store_frame([({"epochs": 2}, 0.05), ({"lr": 1e-3, "reparam": "mlp"}, 0.2),
                         ({"method": "head", "prompt_length": None, "reparam": None, "init": None, "lr": None},
                          0.02)])
    table = S.comparisons(frame, n_boot=2000)
    vs_prompt, vs_head = row_of(table, "variant_vs_prompt"), row_of(table, "variant_vs_head")
    assert (vs_prompt["a"], vs_prompt["b"]) == ("input prompt (MF), epochs=2", "input prompt (MF), epochs=5")
    assert vs_prompt["effect"] == pytest.approx(0.05, abs=0.01)
    assert vs_head["b"] == "head only" and vs_head["effect"] == pytest.approx(0.03, abs=0.01)
    assert row_of(table, "prompt_vs_head")["effect"] == pytest.approx(-0.02, abs=0.01)
    v = verdict_table(frame, None, n_boot=1000)["verdict"]
    assert v.loc[v["claim"].str.startswith("One setting"), "verdict"].tolist() == ["holds"]
    assert v.loc[v["claim"].str.startswith("An input prompt transfers better than the converged"), "verdict"
                 ].tolist() == ["does not hold"]


def test_the_heads_learning_rate_is_a_setting_the_why_rows_change():
    """Issue 15 asks whether the head's learning rate makes the prompt lose to the probe: a prompt whose
    head trained at another rate is paired with the unchanged prompt (the one the grid also ran at 8 per
    class) and with the probe."""
    frame = store_frame([({"head_lr": 5e-3}, 0.03), ({"shots": 8}, -0.1),
                         ({"method": "head", "prompt_length": None, "reparam": None, "init": None, "lr": None},
                          0.01)])
    table = S.comparisons(frame, n_boot=1000)
    vs_prompt, vs_head = row_of(table, "variant_vs_prompt"), row_of(table, "variant_vs_head")
    assert (vs_prompt["a"], vs_prompt["b"]) == ("input prompt (MF), head_lr=0.005", "input prompt (MF), head_lr=0.05")
    assert vs_prompt["effect"] == pytest.approx(0.03, abs=0.01)
    assert vs_head["effect"] == pytest.approx(0.02, abs=0.01)


def test_the_heads_weight_decay_is_a_setting_the_why_rows_change():
    """The probe is L2-regularised and the prompt's head is not by default: a prompt whose head was
    decayed is paired with the unchanged prompt and with the probe, like any other changed setting."""
    frame = store_frame([({"head_weight_decay": 1.0}, 0.02), ({"shots": 8}, -0.1),
                         ({"method": "head", "prompt_length": None, "reparam": None, "init": None, "lr": None},
                          0.01)])
    frame["head_weight_decay"] = frame["head_weight_decay"].fillna(0.0)
    table = S.comparisons(frame, n_boot=1000)
    vs_prompt = row_of(table, "variant_vs_prompt")
    assert (vs_prompt["a"], vs_prompt["b"]) == ("input prompt (MF), head_weight_decay=1.0",
                                                "input prompt (MF), head_weight_decay=0.0")
    assert vs_prompt["effect"] == pytest.approx(0.02, abs=0.01)
    assert row_of(table, "variant_vs_head")["effect"] == pytest.approx(0.01, abs=0.01)


def test_an_effect_whose_seeds_disagree_stays_undecided():
    """The interval resamples languages, so a 3-seed effect of +5 / +5 / -4 points looks decided to it;
    the verdict must say undecided and show the per-seed effects."""
    per_seed = {0: 0.05, 1: 0.05, 2: -0.04}
    frame = store_frame([({"freeze_model": False}, 0.0)], noise=0.002)
    unfrozen = ~frame["freeze_model"]
    frame.loc[unfrozen, "accuracy"] -= frame.loc[unfrozen, "seed"].astype(int).map(per_seed)
    mf = row_of(S.comparisons(frame, n_boot=1000), "mf")
    assert mf["ci_low"] > 0 and mf["seeds_agree"] is False
    assert [float(e) for e in mf["seed_effects"].split(";")] == pytest.approx([0.05, 0.05, -0.04], abs=0.003)
    v = verdict_table(frame, None, n_boot=1000)["verdict"]
    row = v[v["claim"].str.startswith("Freezing")].iloc[0]
    assert row["verdict"] == UNDECIDED and "differ in sign" in row["why"]
    assert re.search(r"per seed \+5\.\d / \+5\.\d / -4\.\d", row["number"])
