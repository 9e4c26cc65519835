"""Settings are declared once; run ids of finished studies never change when declarations move."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from xlprompt.experiments.grid import RunSpec, expand_grid

ROOT = Path(__file__).resolve().parents[1]
STORES = [ROOT / "docs" / "findings" / "store", ROOT / "docs" / "findings" / "tu_store"]
GRIDS = sorted((ROOT / "grids").glob("*.toml"))
# every grid's run ids as the code that wrote the stores computed them
PINNED = json.loads((Path(__file__).parent / "fixtures" / "grid_run_ids.json").read_text())


def test_every_stored_run_keeps_its_id():
    specs = [p for store in STORES for p in sorted((store / "runs").glob("*/spec.json"))]
    assert len(specs) >= 80
    for path in specs:
        assert RunSpec.from_dict(json.loads(path.read_text())).run_id == path.parent.name, path


@pytest.mark.parametrize("grid", GRIDS, ids=[g.stem for g in GRIDS])
def test_grid_run_ids_are_pinned(grid):
    assert sorted(s.run_id for s in expand_grid(grid)) == PINNED[grid.stem]


def test_old_spellings_still_load_and_name_the_same_runs():
    old = {"fixed": {"task": "sib200", "freeze": False, "train_lang": "eng_Latn", "langs": ["deu_Latn"],
                     "method": "deep"}, "axes": {"length": [4], "projection": [True]}}
    new = {"fixed": {"task": "sib200", "freeze_model": False, "train_language": "eng_Latn",
                     "languages": ["deu_Latn"], "method": "deep"},
           "axes": {"prompt_length": [4], "prefix_projection": [True]}}
    (a,), (b,) = expand_grid(old), expand_grid(new)
    assert a.run_id == b.run_id and b.config.method.prompt_length == 4 and b.config.method.prefix_projection
    saved = {**b.to_dict()}
    saved["config"] = {**saved["config"], "method": {"type": "deep_prompt", "length": 4, "projection": True}}
    assert RunSpec.from_dict(saved).run_id == b.run_id  # a spec.json written before the renames


def test_every_declared_setting_is_an_option_and_a_grid_key_and_a_column():
    from typer.testing import CliRunner

    from xlprompt.cli import app
    from xlprompt.experiments.grid import grid_settings
    from xlprompt.experiments.store import columns
    from xlprompt.runs.config import flat_settings

    text = CliRunner().invoke(app, ["train", "--help"], terminal_width=200, env={"COLUMNS": "200"}).output
    for name, s in flat_settings().items():
        assert not s.cli or f"--{name.replace('_', '-')}" in text, name
        assert name in grid_settings()
        assert (name in columns()) == s.column, name
