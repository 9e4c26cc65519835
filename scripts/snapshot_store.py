"""Copy the finished runs of a sweep store into a light, committable copy (no trained-backbone weights).

    python scripts/snapshot_store.py STORE DEST

Each done run folder is copied whole except `backbone.safetensors` (hundreds of MB for --no-freeze and
finetune runs), into a temporary folder renamed into place, so DEST never holds half a run; runs already
in DEST are left as they are, except that an `alignment.json` measured since (by `xlprompt report`) is
copied into them. DEST is itself a store: `xlprompt sweep GRID --store DEST` resumes the grid
from it (the copied runs count as done), and `xlprompt report DEST` reads it. Runs copied without their
backbone keep their results and curves but cannot be reloaded as models.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

SKIP = {"backbone.safetensors"}
LATER = ("alignment.json",)  # written into finished runs by `xlprompt report`


def snapshot(store: Path, dest: Path) -> list[str]:
    copied = []
    (dest / "runs").mkdir(parents=True, exist_ok=True)
    for run in sorted((store / "runs").iterdir()):
        if not run.is_dir() or not (run / "done.json").is_file():
            continue
        if (dest / "runs" / run.name).exists():
            for name in LATER:
                src, dst = run / name, dest / "runs" / run.name / name
                if src.is_file() and (not dst.is_file() or dst.read_bytes() != src.read_bytes()):
                    shutil.copy2(src, dst.with_name(f".{name}.partial"))
                    dst.with_name(f".{name}.partial").replace(dst)
                    copied.append(f"{run.name}/{name}")
            continue
        tmp = dest / "runs" / f".{run.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for f in run.iterdir():
            if f.is_file() and f.name not in SKIP:
                shutil.copy2(f, tmp / f.name)
        tmp.rename(dest / "runs" / run.name)
        copied.append(run.name)
    return copied


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    names = snapshot(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"copied {len(names)} run(s): {' '.join(names)}")
