"""`xlprompt sweep`, `xlprompt store`, `xlprompt report` and `xlprompt plan`: experiment grids, their store,
the report, and how runs execute on this machine."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .app import DEVICE_HELP, DTYPE_HELP, _execution, app, console, friendly
from ..core.errors import XlpromptError


@app.command()
@friendly
def sweep(
    grid: Path = typer.Argument(..., help="Grid file (TOML, or YAML with PyYAML): [fixed] settings and [axes] lists."),
    store: Path = typer.Option(..., help="Store folder: runs/<run id>/ per run and results.parquet."),
    backend: str = typer.Option("local", help="local (this machine) or ray (a local Ray, or --address)."),
    workers: Optional[int] = typer.Option(None, help="Local: worker processes (default: one per visible GPU, "
                                          "each pinned to its GPU; 1 = this process without GPUs). Ray: most "
                                          "tasks in flight (default: cluster CPUs / --num-cpus, GPUs / --num-gpus)."),
    address: Optional[str] = typer.Option(None, help="Ray cluster address (e.g. ray://head:10001 or auto)."),
    num_cpus: Optional[float] = typer.Option(None, help="Ray: CPUs reserved per run (default 1)."),
    num_gpus: Optional[float] = typer.Option(None, help="Ray: GPUs reserved per run (e.g. 1; default none)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs (id, status, settings); run nothing."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (logs, CI)."),
):
    """Run a grid of experiments into a store; rerun to resume (done runs are skipped)."""
    from ..experiments.grid import expand_grid
    from ..experiments.runner import plan, run_sweep

    specs = expand_grid(grid)
    if dry_run:
        _show_plan(specs, plan(specs, store))
        return
    result = run_sweep(specs, store, backend=backend, workers=workers, address=address, num_cpus=num_cpus,
                       num_gpus=num_gpus, progress=not no_progress, **_execution(device, dtype))
    console.print(f"{result.total} runs · {len(result.done)} done now · {len(result.skipped)} done before · "
                  f"{len(result.failed)} failed · {result.seconds:.0f}s · store {store / 'results.parquet'} "
                  f"({len(result.frame)} rows)", highlight=False)
    for rid, error in result.failed.items():
        console.print(f"[red]failed[/] {rid}: {escape(error.splitlines()[0] if error else '')} "
                      f"(see {store / 'runs' / rid / 'failed.json'})", highlight=False)
    if result.failed:
        console.print("rerun the same command to retry the failed runs.")
        raise typer.Exit(1)


def _show_plan(specs, states):
    import json

    from rich.table import Table

    from ..experiments.grid import spec_settings, varying_fields

    columns = varying_fields(specs)
    table = Table(title=f"{len(specs)} runs")
    for name in ["run id", "status", *columns]:
        table.add_column(name)
    for spec in specs:
        flat = spec_settings(spec)
        table.add_row(spec.run_id, states[spec.run_id], *[escape(json.dumps(flat.get(c))) for c in columns])
    console.print(table)
    fixed = {k: v for k, v in spec_settings(specs[0]).items() if k not in columns} if specs else {}
    console.print("same for every run: " + escape(json.dumps(fixed)), soft_wrap=True, highlight=False)
    counts = {s: list(states.values()).count(s) for s in ("done", "failed", "incomplete", "todo")}
    console.print(" · ".join(f"{n} {s}" for s, n in counts.items()), highlight=False)


@app.command("store")
@friendly
def store_cmd(store: Path = typer.Argument(..., help="A sweep's store folder.")):
    """Rebuild DIR/results.parquet from the run folders and summarise it."""
    from ..experiments.store import rebuild_store, store_summary

    if not (store / "runs").is_dir():
        raise XlpromptError(f"{store} is not a sweep store (no runs/ folder); run `xlprompt sweep GRID --store {store}`.")
    frame = rebuild_store(store)
    summary = store_summary(store)
    console.print(f"{len(summary['done'])} runs done · {len(summary['failed'])} failed · "
                  f"{len(summary['incomplete'])} incomplete (crashed, or running now) · {len(frame)} rows in "
                  f"{store / 'results.parquet'}", highlight=False)
    for rid, info in summary["failed"].items():
        console.print(f"[red]failed[/] {rid}: {escape(str(info.get('error', '')).splitlines()[0])}", highlight=False)
    if len(frame):
        from rich.table import Table

        keys = ["model", "method", "freeze_model", "prompt_length", "shots"]
        means = frame.groupby(keys, dropna=False).agg(runs=("run_id", "nunique"), languages=("language", "nunique"),
                                                      accuracy=("accuracy", "mean"), macro_f1=("macro_f1", "mean"))
        table = Table(title="mean over languages and seeds")
        for name in [*keys, "runs", "languages", "accuracy", "macro_f1"]:
            table.add_column(name)
        for index, row in means.reset_index().iterrows():
            table.add_row(*[escape(str(row[k])) for k in keys], str(row["runs"]), str(row["languages"]),
                          f"{row['accuracy']:.3f}", f"{row['macro_f1']:.3f}")
        console.print(table)


@app.command()
@friendly
def report(
    store: Path = typer.Argument(..., help="A sweep's store folder (holds results.parquet)."),
    out: Path = typer.Option(..., help="Report folder to write (replaced atomically if it holds a report)."),
    alignment: bool = typer.Option(True, "--alignment/--no-alignment",
                                   help="Representation alignment on the store's run folders (loads models)."),
    langs: Optional[str] = typer.Option(None, help="Comma-separated target languages (default: all in the store)."),
    sentences: int = typer.Option(100, help="Parallel sentences per language for the alignment analysis."),
):
    """Figures (PNG), tables (CSV) and one self-contained HTML page from a results store."""
    from ..analysis.report import write_report

    codes = [c.strip() for c in langs.split(",") if c.strip()] if langs else None
    started = time.perf_counter()
    meta = write_report(store, out, alignment=alignment, languages=codes, sentences=sentences)
    console.print(f"wrote [bold]{out / 'report.html'}[/] · {len(meta['figures'])} figures · "
                  f"{len(meta['skipped'])} skipped · {time.perf_counter() - started:.1f}s")
    for name, why in meta["skipped"].items():
        console.print(f"  skipped {name}: {escape(str(why))}", soft_wrap=True, highlight=False)
    counts = {}
    for row in meta.get("verdict", []):
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    console.print(f"wrote [bold]{out / 'verdict.md'}[/] · " + " · ".join(f"{n} {v}" for v, n in counts.items())
                  + (f" · {len(meta['stopped_early'])} run(s) stopped too early" if meta.get("stopped_early") else ""))


@app.command("plan")
@friendly
def plan_command(
    model: str = typer.Option("multilingual-e5-small", help="The model whose layer shape is measured."),
    purpose: str = typer.Option("evaluate", help="evaluate | train | serve | sweep."),
    trains_backbone: bool = typer.Option(False, "--trains-backbone", help="A run that trains the model's weights."),
    precision: str = typer.Option("auto", help="As `xlprompt evaluate --precision`."),
    engine: str = typer.Option("auto", help="As `xlprompt evaluate --engine`."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the plan as JSON."),
    remeasure: bool = typer.Option(False, "--remeasure", help="Time this CPU again (on quiet cores) and replace "
                                   "the cached measurement the plan decides by."),
):
    """How runs execute on this machine, and why: the execution plan that train/evaluate/serve resolve."""
    import json

    from ..engine import check_engine
    from ..execution import resolve
    from ..execution.plan import PURPOSES
    from ..models.backbone import layer_shape

    if purpose not in PURPOSES:
        raise XlpromptError(f"--purpose takes one of {', '.join(PURPOSES)}, got {purpose!r}.")
    shape = layer_shape(model)
    if remeasure:
        from ..execution import machine

        machine.machine_speeds(shape or machine.DEFAULT_SHAPE, fresh=True)
    plan = resolve(device, dtype, precision, check_engine(engine), purpose=purpose, trains_backbone=trains_backbone,
                   shape=shape)
    if json_out:
        console.print_json(json.dumps(plan.to_dict()))
        return
    console.print(plan.describe(), highlight=False, soft_wrap=True)
    if plan.measured:
        m = plan.measured
        console.print(f"machine    {m['identity']['model']} · {m['kind']} · flags {' '.join(m['identity']['flags'])} "
                      f"· {m['identity']['cores']} cores · torch {m['identity']['torch']} · one layer "
                      f"{m['shape']['hidden']}x{m['shape']['intermediate']}, {m['rows']}x{m['width']} tokens, "
                      f"{m['threads']} threads: "
                      + ", ".join(f"{k} {1000 * v:.1f} ms ({m['speedup'][k]:.2f}x)"
                                  for k, v in m["median_seconds"].items())
                      + f" ({m['source']})", highlight=False, soft_wrap=True)
