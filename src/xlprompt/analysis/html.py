"""The report's single HTML page: headline numbers first, then every figure (PNG embedded as a base64
data URI, so the file is self-contained), the table behind it and the filters that produced it."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from . import languages as L
from . import tables as T

PREVIEW_ROWS = 40
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1150px;
     color:#1d2330;background:#fff;line-height:1.45;padding:0 16px}
h1{font-size:26px;margin-bottom:4px} h2{font-size:20px;margin-top:34px;border-bottom:2px solid #e3e6ee;padding-bottom:4px}
h3{font-size:16px;margin-top:22px} .meta{color:#5b6475;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:14px;margin:14px 0}
.card{border:1px solid #d9dde7;border-radius:8px;padding:10px 14px;background:#f7f9fc;min-width:240px;flex:1;
      overflow-x:auto}
.card h3{margin:0 0 6px 0;font-size:14px;color:#34405a}
table.data{border-collapse:collapse;font-size:12.5px;margin:6px 0}
table.data th,table.data td{border:1px solid #dde1ea;padding:3px 7px;text-align:right}
table.data th{background:#eef1f7} table.data td:first-child,table.data th:first-child{text-align:left}
figure{margin:10px 0 4px 0} figure img{max-width:100%;border:1px solid #e3e6ee}
figcaption{font-size:13px;color:#404a5e} details{margin:6px 0} summary{cursor:pointer;color:#2c5cc5}
pre{background:#f4f5f8;padding:8px;font-size:11.5px;overflow-x:auto} .skip{color:#8a5a00}
"""


def _table(frame: pd.DataFrame, rows: int | None = PREVIEW_ROWS) -> str:
    shown = T.shown(frame if rows is None else frame.head(rows))
    out = shown.to_html(index=False, border=0, classes="data", na_rep="–", float_format=lambda v: f"{v:.3f}",
                        escape=True)
    if rows is not None and len(frame) > rows:
        out += f'<p class="meta">first {rows} of {len(frame)} rows; the CSV has all.</p>'
    return out


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _headline(meta: dict) -> str:
    head = meta.get("headline", {})
    cards = []
    if head.get("mf"):
        cards.append(("Model freezing (MF) vs no MF", _table(pd.DataFrame(head["mf"]), None)))
    if head.get("prompt_length"):
        rows = [{"series": c["series"], **{f"L={k}": v for k, v in c["curve"].items()}, "best L": c["best_length"]}
                for c in head["prompt_length"]]
        cards.append(("Accuracy vs prompt length", _table(pd.DataFrame(rows), None)))
    if head.get("distance_correlation"):
        corr = pd.DataFrame(head["distance_correlation"])
        wide = corr.pivot_table(index="distance", columns="freezing", values=["pearson_r", "slope"])
        wide.columns = [f"{'r' if v == 'pearson_r' else v} ({f})" for v, f in wide.columns]
        cards.append(("Accuracy vs distance from the training language (mean over models)",
                      _table(wide.reset_index(), None) + '<p class="meta">r: Pearson correlation; slope: '
                      "accuracy change per unit of distance. More negative = stronger bias toward languages "
                      "close to the training language.</p>"))
    if not cards:
        return '<p class="skip">No headline numbers: the store lacks the variation they need (see below).</p>'
    return '<div class="cards">' + "".join(f'<div class="card"><h3>{html.escape(t)}</h3>{b}</div>'
                                           for t, b in cards) + "</div>"


def _verdict(extra: dict) -> str:
    """The verdict table, the statistics behind it, and the runs that may have stopped too early."""
    verdict = extra.get("verdict")
    if verdict is None or verdict.empty:
        return ""
    parts = ["<h2 id='verdict'>Verdict on the studies' claims</h2>",
             _table(verdict[["claim", "setting", "number", "languages", "seeds", "verdict", "why"]], None),
             "<p class='meta'>Effects in accuracy points over zero-shot languages (per language: mean over seeds); "
             "95 % bootstrap intervals over languages; paired Wilcoxon signed-rank p-values across languages. "
             "Also in verdict.md and tables/verdict.csv.</p>"]
    for key, title in (("statistics", "Every paired comparison"),
                       ("length_slopes", "Accuracy per doubling of prompt length"),
                       ("distance_slopes", "Slopes of accuracy on distance, MF vs no MF"),
                       ("reparam", "Reparameterization per language")):
        if extra.get(key) is not None and not extra[key].empty:
            parts.append(f"<details><summary>{html.escape(title)} (tables/{key}.csv)</summary>"
                         f"{_table(extra[key], None)}</details>")
    early = extra.get("stopped_early")
    if early is not None and not early.empty:
        parts.append(f"<h3>Stopped too early</h3><p class='skip'>{len(early)} run(s) had their best dev loss at "
                     f"their last epoch while it was still falling (late_dev_gain: its relative drop over the last "
                     f"quarter of the epochs): more epochs might have helped.</p>{_table(early, None)}")
    return "\n".join(parts)


def render_page(meta: dict, figures: list, folder: Path, extra: dict, langs: pd.DataFrame) -> str:
    """`figures`: (name, title, png path, csv path or None, caption), paths relative to `folder`."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>xlprompt report</title>"
             f"<style>{CSS}</style></head><body>",
             "<h1>xlprompt report</h1>",
             f"<p class='meta'>store <code>{esc(meta['store'])}</code> · {meta['runs']} runs · "
             f"{meta['languages']} languages · models: {esc(', '.join(meta['models']))} · methods: "
             f"{esc(', '.join(meta['methods']))} · generated {esc(meta['generated'])}</p>",
             "<h2 id='headline'>Headline numbers</h2>", _headline(meta), _verdict(extra)]
    parts.append("<h2 id='figures'>Figures</h2>")
    for name, title, png, csv, caption in figures:
        parts.append(f"<h3 id='{esc(name)}'>{esc(title)}</h3><figure>{_img(folder / png)}"
                     f"<figcaption>{esc(caption)}</figcaption></figure>")
        if csv and (folder / csv).exists():
            parts.append(f"<details><summary>table ({esc(csv)})</summary>{_table(pd.read_csv(folder / csv))}</details>")
        cfg = folder / "figures" / f"{name}.json"
        if cfg.exists():
            parts.append(f"<details><summary>config and filters ({esc(cfg.name)})</summary>"
                         f"<pre>{esc(json.dumps(json.loads(cfg.read_text()), indent=1))}</pre></details>")
    if meta.get("skipped"):
        parts.append("<h3>Figures not produced</h3><ul>" + "".join(
            f"<li class='skip'><b>{esc(k)}</b>: {esc(str(v))}</li>" for k, v in meta["skipped"].items()) + "</ul>")
    parts.append("<h2 id='languages'>Language analysis</h2>")
    corr = extra.get("correlations")
    if corr is not None and not corr.empty:
        parts.append("<h3>Correlation of transfer accuracy with distance from the training language</h3>"
                     + _table(corr, None))
    for key, title in (("by_family", "Accuracy by language family"), ("by_script", "Accuracy by script")):
        if extra.get(key) is not None and not extra[key].empty:
            parts.append(f"<h3>{title}</h3>" + _table(extra[key]))
    shown = [c for c in ("language", "name", "family", "script_name", *L.DISTANCES) if c in langs.columns]
    shown += [c for c in langs.columns if c.startswith("seen_")]
    parts.append(f"<details><summary>all {len(langs)} languages: family, script, distances, seen in "
                 f"pretraining</summary>{_table(langs[shown], None)}</details>")
    sources = []
    for fam in L.PRETRAINING_FILES:
        info = L.pretraining_list(fam)
        uncertain = [e["code"] for e in info["languages"] if e.get("uncertain")]
        sources.append(f"<li><b>{esc(fam)}</b> ({len(info['languages'])} languages): {esc(info['source'])}"
                       + (f" Uncertain mappings: {esc(', '.join(uncertain))}." if uncertain else "") + "</li>")
    parts.append("<h3>Sources of the pretraining language lists</h3><ul>" + "".join(sources) + "</ul>")
    if meta.get("notes"):
        parts.append("<h2 id='notes'>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in meta["notes"])
                     + "</ul>")
    parts.append(f"<p class='meta'>analysis took {meta['seconds']}s.</p></body></html>")
    return "\n".join(parts)
