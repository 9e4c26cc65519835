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
