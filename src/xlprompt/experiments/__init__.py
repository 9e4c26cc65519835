"""Sweeps: grid files → run specs (hash of the resolved config) → runner (local or Ray) → store (Parquet)."""
from .grid import RunSpec, expand_grid, load_grid
from .runner import SweepResult, run_sweep
from .store import load_store, rebuild_store

__all__ = ["RunSpec", "SweepResult", "expand_grid", "load_grid", "load_store", "rebuild_store", "run_sweep"]
