"""Languages seen in pretraining, linguistic distances from the training language, and how transfer
accuracy correlates with them (Philippy et al.: freezing reduces bias toward similar languages).

Distances come from URIEL, the database `lang2vec` ships as data files. The PyPI release (1.1.2) has
no `distance()` function and its module imports `pkg_resources`, which recent setuptools removed, so
we read its `.npz` files directly and compute the distances as URIEL defines them (Littell et al. 2017):

* syntactic: cosine distance between the KNN-predicted syntax vectors (`syntax_knn`);
* genetic: 1 - shared Glottolog tree nodes / the deeper of the two lineages (`fam` membership);
* geographic: great-circle distance / antipodal distance. URIEL's `geo` set holds each language's
  distance to 299 fixed points as that same fraction, so the location is recovered by
  multilateration (residual ~0.003, the rounding of the stored values);
* featural: cosine distance between the concatenated syntax, phonology and inventory KNN vectors,
  family membership and geography vectors.

URIEL's own precomputed tables may differ in detail; any language lang2vec lacks gets NaN.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.languages import language_info

DISTANCES = ("syntactic", "genetic", "geographic", "featural")
# FLORES uses individual-language codes where URIEL's family data sits on a macrolanguage or a
# neighbour (empty or one-node lineages); used for the genetic distance and family only.
FAMILY_FALLBACK = {"lvs": "lav", "ltg": "lav", "nob": "nor", "nno": "nor", "twi": "aka", "nqo": "man",
                   "zho": "cmn"}
ISOLATES = {"eus": "Basque (isolate)"}
PRETRAINING_FILES = ("xglm", "bloom", "xlmr")


# ------------------------------------------------------------------------------ pretraining lists


@lru_cache(maxsize=None)
def pretraining_list(family: str) -> dict:
    """The resource file for one model family: sources, notes and the FLORES codes it covers."""
    res = resources.files("xlprompt.analysis").joinpath("resources", f"pretraining_{family}.json")
    return json.loads(res.read_text(encoding="utf-8"))


def model_family(model: str) -> str | None:
    """'xglm' | 'bloom' | 'xlmr' for a model name or path (e5 inherits XLM-R's list), else None."""
    low = str(model).lower()
    for family in PRETRAINING_FILES:
        if any(key in low for key in pretraining_list(family)["matches_models"]):
            return family
    return None


def seen_in_pretraining(model: str, code: str) -> tuple[bool | None, bool]:
    """(seen, mapping uncertain) for a FLORES code; seen is None when the model's list is unknown."""
    family = model_family(model)
    if family is None:
        return None, False
    for entry in pretraining_list(family)["languages"]:
        if code in entry["flores"]:
            return True, bool(entry.get("uncertain"))
    return False, False


# ------------------------------------------------------------------------------------- URIEL data


@dataclass(frozen=True)
class _Uriel:
    index: dict            # iso639-3 -> row
    syntax: np.ndarray     # (langs, S_ features)
    typology: np.ndarray   # (langs, syntax + phonology + inventory)
    geo: np.ndarray        # (langs, 299) distance to fixed points / antipodal distance
    points: np.ndarray     # (299, 2) lat, lon of the fixed points
    fam: dict              # iso -> frozenset of family-node indices
    fam_names: np.ndarray
    fam_size: np.ndarray   # members per node: the root of a lineage has the most


def _lang2vec_data() -> Path | None:
    """lang2vec's data folder, found through the installed distribution's metadata, not by importing:
    the wheel also installs a script `bin/lang2vec.py`, which shadows the package (and fails on
    `import pkg_resources`) whenever the venv's bin folder is sys.path[0], as under a console script."""
    from importlib import metadata

    try:
        folder = Path(metadata.distribution("lang2vec").locate_file("lang2vec/data"))
    except metadata.PackageNotFoundError:
        return None
    return folder if (folder / "family_features.npz").is_file() else None


@lru_cache(maxsize=1)
def _uriel() -> _Uriel | None:
    data = _lang2vec_data()
    if data is None:
        return None

    def load(name):
        db = np.load(data / name)
        return {k: db[k] for k in db.files}

    knn, geo, fam = load("feature_predictions.npz"), load("geocoord_features.npz"), load("family_features.npz")
    langs = [str(v) for v in knn["langs"]]
    for db in (geo, fam):  # the files list the same languages in different orders: align on knn's
        pos = {str(l): i for i, l in enumerate(db["langs"])}
        if set(pos) != set(langs):
            return None  # an unknown data layout: better no distances than wrong ones
        db["data"] = db["data"][[pos[l] for l in langs]]
    feats = knn["feats"].astype(str)
    x = knn["data"][:, :, 0]
    typ = np.concatenate([x[:, np.char.startswith(feats, p)] for p in ("S_", "P_", "INV_")], axis=1)
    points = np.array([[float(v) for v in f[3:].split("_")] for f in geo["feats"].astype(str)])
    member = fam["data"][:, :, 0] == 1
    rows, cols = np.nonzero(member)
    sets: dict = {}
    for r, c in zip(rows.tolist(), cols.tolist()):
        sets.setdefault(r, []).append(c)
    return _Uriel(index={l: i for i, l in enumerate(langs)}, syntax=x[:, np.char.startswith(feats, "S_")],
                  typology=typ, geo=geo["data"][:, :, 0], points=points,
                  fam={l: frozenset(sets.get(i, ())) for i, l in enumerate(langs)},
                  fam_names=np.array([f[2:] for f in fam["feats"].astype(str)]), fam_size=member.sum(0))


def _arc(lat1, lon1, lat2, lon2):
    """Great-circle distance as a fraction of the antipodal distance (URIEL's unit)."""
    lat1, lon1, lat2, lon2 = map(np.radians, (lat1, lon1, lat2, lon2))
    c = np.sin(lat1) * np.sin(lat2) + np.cos(lat1) * np.cos(lat2) * np.cos(lon1 - lon2)
    return np.arccos(np.clip(c, -1.0, 1.0)) / np.pi


@lru_cache(maxsize=1)
def _grid() -> tuple[np.ndarray, np.ndarray]:
    """A 4-degree grid of the globe and its distances to URIEL's fixed points (computed once)."""
    u = _uriel()
    grid = np.array([(a, b) for a in range(-88, 89, 4) for b in range(-180, 180, 4)], dtype=float)
    return grid, _arc(grid[:, None, 0], grid[:, None, 1], u.points[None, :, 0], u.points[None, :, 1])


@lru_cache(maxsize=None)
def uriel_location(iso: str) -> tuple[float, float] | None:
    """(lat, lon) recovered from the distances to URIEL's fixed points: coarse grid, then least squares."""
    from scipy.optimize import least_squares

    u = _uriel()
    if u is None or iso not in u.index:
        return None
    target = u.geo[u.index[iso]]
    if (target < 0).any():
        return None
    grid, dist = _grid()
    start = grid[((dist - target) ** 2).sum(1).argmin()]
    fit = least_squares(lambda p: _arc(p[0], p[1], u.points[:, 0], u.points[:, 1]) - target, start)
    return float(fit.x[0]), float(fit.x[1])


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return float("nan")
    return float(1.0 - a @ b / (na * nb))


def _lineage(u: _Uriel, iso: str) -> frozenset:
    nodes = u.fam.get(iso, frozenset())
    fallback = FAMILY_FALLBACK.get(iso)
    if fallback and len(u.fam.get(fallback, ())) > len(nodes):
        return u.fam[fallback]
    return nodes


def family_of(iso: str) -> str:
    """Top-level family (the lineage's largest node), 'Basque (isolate)', or 'unknown'."""
    if iso in ISOLATES:
        return ISOLATES[iso]
    u = _uriel()
    if u is None:
        return "unknown"
    nodes = sorted(_lineage(u, iso))
    if not nodes:
        return "unknown"
    return str(u.fam_names[nodes[int(np.argmax(u.fam_size[nodes]))]])


def uriel_distances(iso_a: str, iso_b: str) -> dict:
    """The four URIEL distances between two ISO 639-3 codes (NaN where lang2vec lacks either)."""
    u = _uriel()
    out = dict.fromkeys(DISTANCES, float("nan"))
    if u is None or iso_a not in u.index or iso_b not in u.index:
        return out
    i, j = u.index[iso_a], u.index[iso_b]
    out["syntactic"] = _cosine_distance(u.syntax[i], u.syntax[j])
    la, lb = _lineage(u, iso_a), _lineage(u, iso_b)
    if iso_a == iso_b:
        out["genetic"] = 0.0
    elif la and lb:
        out["genetic"] = 1.0 - len(la & lb) / max(len(la), len(lb))
    elif iso_a in ISOLATES or iso_b in ISOLATES:
        out["genetic"] = 1.0  # an isolate shares no node with anything
    pa, pb = uriel_location(iso_a), uriel_location(iso_b)
    if pa and pb:
        out["geographic"] = float(_arc(pa[0], pa[1], pb[0], pb[1]))

    def full(k, nodes):
        fam = np.zeros(len(u.fam_names), dtype=np.float32)
        fam[list(nodes)] = 1.0
        return np.concatenate([u.typology[k], fam, u.geo[k]])

    out["featural"] = _cosine_distance(full(i, la), full(j, lb))
    return out


def lang2vec_available() -> bool:
    return _uriel() is not None


# ------------------------------------------------------------------------------ language table


def _meta(code: str) -> dict:
    try:
        info = language_info(code)
        return {"name": info.name, "iso639_3": info.iso639_3, "script": info.script,
                "script_name": info.script_name}
    except Exception:  # own-data codes without metadata: the script still comes from the suffix
        iso, _, script = code.partition("_")
        return {"name": "", "iso639_3": iso, "script": script, "script_name": script}


def language_table(codes, train_language: str = "eng_Latn", models=()) -> pd.DataFrame:
    """One row per language: name, ISO code, script, family, distances to `train_language`, and
    `seen_<family>` / `seen_<family>_uncertain` for each model family among `models`."""
    train_iso = _meta(train_language)["iso639_3"]
    families = sorted({f for f in (model_family(m) for m in models) if f})
    rows = []
    for code in codes:
        meta = _meta(code)
        row = {"language": code, **meta, "family": family_of(meta["iso639_3"]),
               **uriel_distances(meta["iso639_3"], train_iso)}
        for fam in families:
            hit = next((e for e in pretraining_list(fam)["languages"] if code in e["flores"]), None)
            row[f"seen_{fam}"] = hit is not None
            row[f"seen_{fam}_uncertain"] = bool(hit and hit.get("uncertain"))
        rows.append(row)
    return pd.DataFrame(rows)


def label(code: str) -> str:
    """'swh_Latn (Swahili)' for axes and legends."""
    name = _meta(code)["name"]
    return f"{code} ({name})" if name else code


# ----------------------------------------------------------------------------------- statistics


def correlate(x, y) -> dict:
    """Pearson and Spearman coefficients (with p-values) over the pairs where both are finite, and the
    least-squares slope: coefficients are scale-free, so "less bias" (a flatter accuracy-vs-distance
    line) shows in the slope even when r stays the same."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    nan = float("nan")
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": int(len(x)), "pearson_r": nan, "pearson_p": nan, "spearman_rho": nan, "spearman_p": nan,
                "slope": nan}
    pr, pp = stats.pearsonr(x, y)
    sr, sp = stats.spearmanr(x, y)
    return {"n": int(len(x)), "pearson_r": float(pr), "pearson_p": float(pp),
            "spearman_rho": float(sr), "spearman_p": float(sp), "slope": float(np.polyfit(x, y, 1)[0])}


def distance_correlations(per_language: pd.DataFrame, langs: pd.DataFrame, group_cols) -> pd.DataFrame:
    """Per group (e.g. model, method, freeze_model) and distance: correlation of transfer accuracy
    (`per_language` has columns group_cols + language + accuracy) with that distance."""
    merged = per_language.merge(langs[["language", *DISTANCES]], on="language", how="left")
    rows = []
    for key, part in merged.groupby(list(group_cols), dropna=False, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        for dist in DISTANCES:
            rows.append({**dict(zip(group_cols, key)), "distance": dist,
                         **correlate(part[dist], part["accuracy"])})
    return pd.DataFrame(rows)


def grouped_accuracy(per_language: pd.DataFrame, langs: pd.DataFrame, by: str, group_cols) -> pd.DataFrame:
    """Mean, std and count of per-language accuracy by `by` (family, script_name, seen_*) per group."""
    merged = per_language.merge(langs, on="language", how="left")
    out = (merged.groupby([*group_cols, by], dropna=False)["accuracy"]
           .agg(mean="mean", std="std", languages="count").reset_index())
    return out.sort_values([*group_cols, "mean"], ascending=[True] * len(group_cols) + [False])
