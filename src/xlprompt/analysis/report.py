"""`xlprompt report`: figures (PNG), their tables (CSV) and filters (JSON), and one self-contained HTML
page, written into a staging folder that replaces REPORT_DIR only when everything is done."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from ..core import io
from ..data.languages import unknown_language_message
from ..core.errors import XlpromptError
from ..runs.config import source_languages
from . import alignment_seeds
from . import languages as L
from . import tables as T
from .html import render_page
from .verdict import verdict_markdown, verdict_table

MARKER = "report.json"  # a folder holding it is a report we may replace


@contextmanager
def _staging(out_dir: Path):
    """Yield a fresh folder beside `out_dir`; on success it takes `out_dir`'s place (the old report is
    moved aside first, then deleted), so readers see the old report or the new one, never a mix."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / MARKER).exists())):
        raise XlpromptError(f"{out_dir} exists and is not an xlprompt report; choose another --out.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{time.time_ns()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda v: v.item() if isinstance(v, np.generic) else str(v)))


def _csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, index=False)


# ---------------------------------------------------------------------------------- language studies


def language_studies(frame: pd.DataFrame, langs: pd.DataFrame, train: str) -> tuple[list[T.Study], dict]:
    """Accuracy vs distance and seen vs unseen figures, plus correlation / family / script tables.
    Distances are to `train`, so only runs trained on that language are used."""
    sel, chosen = T.headline_slice(frame[frame["train_language"] == train])
    keys = ["model", "method", "freeze_model"]
    pl = T.per_language(sel, keys)
    pl["series"] = [T.series_label(r, keys) for _, r in pl.iterrows()]
    extra = {"correlations": L.distance_correlations(pl, langs, keys),
             "by_family": L.grouped_accuracy(pl, langs, "family", keys),
             "by_script": L.grouped_accuracy(pl, langs, "script_name", keys)}
    config = {"runs": f"prompt methods trained on {train}, one setting per model / method / freezing",
              "held_fixed": chosen,
              "accuracy": "per language, mean over seeds", "distances": "URIEL via lang2vec data files, "
              "to the training language"}
    studies = []
    dist = pl.merge(langs[["language", "name", *L.DISTANCES]], on="language", how="left")
    name, title = "accuracy_vs_distance", "Transfer accuracy vs linguistic distance from the training language"
    if not L.lang2vec_available():
        studies.append(T.Study(name, title, skipped="lang2vec is not installed (pip install lang2vec): "
                               "distances are NaN"))
    elif dist[list(L.DISTANCES)].notna().sum().max() < 3:
        studies.append(T.Study(name, title, skipped="fewer than 3 target languages with URIEL distances"))
    else:
        studies.append(T.Study(name, title, dist, config, caption="Each point is a language (mean over seeds); "
                               "lines are least-squares fits, r is Pearson's. A flatter line means less bias "
                               "toward languages similar to the training language."))
    seen_rows = []
    for model, part in pl.groupby("model"):
        col = f"seen_{L.model_family(model)}"
        if col not in langs.columns:  # no pretraining list for this model
            continue
        merged = part.merge(langs[["language", col]], on="language").rename(columns={col: "seen"})
        seen_rows.append(merged.groupby(["series", "seen"])["accuracy"]
                         .agg(mean="mean", std="std", languages="count").reset_index())
    seen = pd.concat(seen_rows) if seen_rows else pd.DataFrame()
    name, title = "seen_vs_unseen", "Transfer accuracy on languages seen vs unseen in pretraining"
    if seen.empty or seen["seen"].nunique() < 2:
        studies.append(T.Study(name, title, skipped="needs a model with a known pretraining list (XGLM, "
                               "BLOOM, XLM-R/e5) evaluated on both seen and unseen languages"))
    else:
        studies.append(T.Study(name, title, seen, config, caption="Pretraining lists: resources/pretraining_"
                               "*.json (sources and uncertain mappings inside)."))
    return studies, extra


# ------------------------------------------------------------------------------------- headlines


def headlines(studies: dict, extra: dict) -> dict:
    """The numbers at the top of the page: MF effect, prompt-length curve, distance correlations."""
    out = {}
    mf = studies.get("mf_vs_no_mf")
    if mf is not None and mf.table is not None:
        wide = mf.table.pivot_table(index=["model", "method"], columns="freeze_model", values="accuracy_mean")
        rows = []
        for (model, method), r in wide.iterrows():
            chosen = [c for c in mf.config.get("held_fixed", []) if (c.get("model"), c.get("method")) == (model, method)]
            rows.append({"model": T.model_label(model), "method": T.method_label(method),
                         "MF": r.get(True), "no MF": r.get(False), "MF - no MF": r.get(True) - r.get(False),
                         "held fixed": T.held_fixed_text(chosen)})
        out["mf"] = rows
    ln = studies.get("prompt_length")
    if ln is not None and ln.table is not None:
        curves = []
        for key, part in ln.table.groupby(["model", "method", "freeze_model"]):
            part = part.sort_values("prompt_length")
            best = part.loc[part["accuracy_mean"].idxmax()]
            curves.append({"series": T.series_label(dict(zip(["model", "method", "freeze_model"], key)),
                                                    ["model", "method", "freeze_model"]),
                           "curve": {int(p): round(float(a), 4) for p, a in
                                     zip(part["prompt_length"], part["accuracy_mean"])},
                           "best_length": int(best["prompt_length"]), "best_accuracy": float(best["accuracy_mean"]),
                           "held fixed": T.held_fixed_text([c for c in ln.config.get("held_fixed", []) if (
                               c.get("model"), c.get("method"), c.get("freeze_model")) == key])})
        out["prompt_length"] = curves
    corr = extra.get("correlations")
    if corr is not None and not corr.empty and corr["pearson_r"].notna().any():
        cols = ["pearson_r", "spearman_rho", "slope"]
        agg = corr.groupby(["distance", "freeze_model"])[cols].mean().reset_index()
        out["distance_correlation"] = [
            {"distance": d, "freezing": "MF" if f else "no MF", **dict(zip(cols, v))}
            for d, f, *v in agg[["distance", "freeze_model", *cols]].itertuples(index=False)]
    return _jsonable(out)


# ------------------------------------------------------------------------------------- alignment


def pick_alignment_runs(frame: pd.DataFrame, store_dir: Path, limit: int = 4) -> list[tuple[str, Path]]:
    """Complete run folders to analyse: per task and model, a frozen prompt run, a fine-tuned run and
    an unfrozen prompt run (lowest seed, most languages), at most `limit`."""
    runs = frame.groupby("run_id").agg(task=("task", "first"), model=("model", "first"),
                                       method=("method", "first"), freeze=("freeze_model", "first"),
                                       seed=("seed", "min"), langs=("language", "nunique")).reset_index()
    runs = runs[[(store_dir / "runs" / r / "run.json").exists() for r in runs["run_id"]]]
    rank = {("input", True): 0, ("prefix", True): 1, ("finetune", False): 2, ("input", False): 3, ("prefix", False): 4}
    runs["rank"] = [rank.get((T.method_kind(m), bool(f)), 9) for m, f in zip(runs["method"], runs["freeze"])]
    runs = runs.sort_values(["rank", "seed", "langs", "run_id"], ascending=[True, True, False, True])
    picked = runs.drop_duplicates(["task", "model", "method", "freeze"]).head(limit)
    return [(f"{T.model_label(r.model)} · {T.method_label(r.method)}"
             + ("" if T.method_kind(r.method) == "finetune" else f" · {'MF' if r.freeze else 'no MF'}"),
             store_dir / "runs" / r.run_id) for r in picked.itertuples()]


def alignment_section(frame, store_dir: Path, out: Path, languages, sentences: int) -> tuple[list, list[str]]:
    """Run the alignment analysis on picked runs; returns ([(name, title, png, csv, caption)], notes)."""
    from .. import load
    from ..tasks import get_task
    from ..evaluation import representations as R
    from . import alignment as A

    items, notes, tables, plain_done, runs_used = [], [], [], set(), []
    picked = pick_alignment_runs(frame, store_dir)
    if not picked:
        return [], ["alignment skipped: no complete run folders under DIR/runs/ (needs run.json)"]
    for name, run_dir in picked:
        started = time.perf_counter()
        try:
            run = load(run_dir)
        except Exception as exc:  # noqa: BLE001 - one unloadable run must not sink the report
            notes.append(f"alignment: could not load {run_dir.name} ({type(exc).__name__}: {exc})")
            continue
        task = get_task(run.config.task)
        pivot = source_languages(run.config, task)[0]  # the first source
        available = [c for c in task.languages(run.config.data_dir) if c != pivot]
        codes = [c for c in (languages or R.pick_languages(available, 4)) if c in available]
        if not codes:
            notes.append(f"alignment: {name} has no target languages among {languages}")
            continue
        key = (run.config.task, run.config.model)  # the pretrained model is shared by its frozen runs
        scores, last, labels, label_names = R.run_alignment(run, name, codes, pivot, sentences,
                                                            plain=key not in plain_done)
        if run.config.freeze_model:
            plain_done.add(key)
        tables.append(scores)
        stem = f"boundaries_{len(items)}"
        points = A.plot_boundaries(last, labels, label_names, name, out / "figures" / f"{stem}.png")
        _csv(points, out / "tables" / f"{stem}.csv")
        setup = {"run": name, "run_dir": str(run_dir), "task": run.config.task, "split": task.eval_split,
                 "pivot": pivot, "languages": codes, "sentences": int(len(next(iter(labels.values())))),
                 "representation": "mean of last-layer hidden states over text positions (prompt slots and "
                                   "padding excluded)", "conditions": sorted(last)}
        runs_used.append(setup)
        io.write_json(out / "figures" / f"{stem}.json", _jsonable({"figure": stem, **setup,
                                                                   "projection": "PCA(2) per condition"}))
        items.append((stem, f"Decision boundaries: {name}", f"figures/{stem}.png", f"tables/{stem}.csv",
                      f"{setup['sentences']} parallel sentences per language, coloured by label."))
        notes.append(f"alignment: {name} ({run_dir.name}) took {time.perf_counter() - started:.1f}s")
    if tables:
        scores = pd.concat(tables, ignore_index=True)
        _csv(scores, out / "tables" / "alignment.csv")
        A.plot_layers(scores, out / "figures" / "alignment_layers.png")
        io.write_json(out / "figures" / "alignment_layers.json", _jsonable({
            "figure": "alignment_layers", "runs": runs_used,
            "cosine": "mean over sentences of cos(sentence in language, its parallel pivot sentence)",
            "retrieval": "share of sentences whose nearest pivot sentence by cosine is the parallel one",
            "pretrained baseline": "a frozen run without its prompt (computed once per task and model)"}))
        items.insert(0, ("alignment_layers", "Alignment with the parallel English sentence per layer",
                         "figures/alignment_layers.png", "tables/alignment.csv",
                         "Mean-pooled text representations; cosine and retrieval accuracy averaged over "
                         f"languages ({', '.join(sorted(scores['language'].unique()))})."))
    return items, notes


# ----------------------------------------------------------------------------------------- main


def write_report(store_dir: str | Path, out_dir: str | Path, *, alignment: bool = True, languages=None,
                 sentences: int = 100, lang_table: pd.DataFrame | None = None) -> dict:
    """Write REPORT_DIR: report.html, verdict.md, report.json, figures/*.png|json, tables/*.csv (statistics,
    verdict, ...). Returns report.json.

    `languages` restricts the report (and the alignment analysis) to those target languages;
    `lang_table` replaces the computed language table (distances, families), e.g. in tests."""
    from .figures import PLOTTERS

    started = time.perf_counter()
    store_dir, out_dir = Path(store_dir), Path(out_dir)
    frame = T.load_results(store_dir)
    if languages:
        known = sorted(set(frame["language"]))
        for code in languages:
            if code not in known:
                raise XlpromptError(unknown_language_message(code, known, where=" in the store"))
        frame = frame[frame["language"].isin(languages) | T.trained_on(frame)]
    sources = {code for joined in frame["train_language"] for code in str(joined).split(",")}
    codes = sorted(set(frame["language"]) | sources)
    train = str(frame["train_language"].mode().iloc[0]).split(",")[0]  # distances: to the (first) source
    langs = lang_table if lang_table is not None else L.language_table(codes, train, frame["model"].unique())
    studies = [T.mf_study(frame), T.shots_study(frame), T.length_study(frame), T.reparam_study(frame),
               T.methods_study(frame)]
    lang_studies, extra = language_studies(frame, langs, train)
    studies += lang_studies
    # alignment with seeds: computed with alignment on, else only what the run folders already hold
    measured, notes = alignment_seeds.measure(frame, store_dir, compute=alignment, languages=languages,
                                              sentences=sentences)
    aligned = alignment_seeds.comparisons(measured)
    decided = verdict_table(frame, langs, alignment=aligned)
    extra.update({name: decided[name] for name in ("verdict", "statistics", "length_slopes", "distance_slopes",
                                                   "reparam", "stopped_early")})
    if not aligned.empty:
        extra["alignment_by_seed"] = measured
        extra["alignment_statistics"] = aligned
    if not L.lang2vec_available():
        notes.append("lang2vec is not installed: distances and families are NaN / unknown.")
    missing = langs.loc[langs[list(L.DISTANCES)].isna().all(axis=1), "language"].tolist()
    if missing and L.lang2vec_available():
        notes.append(f"no URIEL distances for: {', '.join(missing)}")
    with _staging(out_dir) as tmp:
        (tmp / "figures").mkdir()
        (tmp / "tables").mkdir()
        figures = []
        for study in studies:
            if study.skipped:
                continue
            PLOTTERS[study.name](study, tmp / "figures" / f"{study.name}.png")
            _csv(study.table, tmp / "tables" / f"{study.name}.csv")
            io.write_json(tmp / "figures" / f"{study.name}.json",
                          _jsonable({"figure": study.name, "title": study.title, "store": str(store_dir),
                                     "languages": languages or "all", **study.config}))
            figures.append((study.name, study.title, f"figures/{study.name}.png", f"tables/{study.name}.csv",
                            T.caption_of(study)))
        for name, table in {**extra, "summary": T.summary_table(frame), "languages": langs}.items():
            _csv(table, tmp / "tables" / f"{name}.csv")
        if alignment:
            items, align_notes = alignment_section(frame, store_dir, tmp, languages, sentences)
            figures += items
            notes += align_notes
        skipped = {s.name: s.skipped for s in studies if s.skipped}
        if not alignment:
            skipped["alignment"] = "turned off (--no-alignment)"
        meta = _jsonable({
            "format": "xlprompt-report/1", "store": str(store_dir), "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
            "runs": int(frame["run_id"].nunique()), "languages": len(codes),
            "models": sorted(map(str, frame["model"].unique())), "methods": sorted(map(str, frame["method"].unique())),
            "headline": headlines({s.name: s for s in studies}, extra),
            "verdict": decided["verdict"].to_dict("records"),
            "stopped_early": decided["stopped_early"]["run_id"].tolist(),
            "figures": [{"name": n, "png": p, "csv": c} for n, _, p, c, _ in figures],
            "skipped": skipped, "notes": notes, "seconds": round(time.perf_counter() - started, 2)})
        io.write_text(tmp / "verdict.md", verdict_markdown(decided, str(store_dir)))
        html = render_page(meta, figures, tmp, extra, langs)
        io.write_text(tmp / "report.html", html)
        io.write_json(tmp / MARKER, meta)  # last: marks the folder as a (complete) report
    return meta
