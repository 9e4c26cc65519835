"""The `xlprompt` command: thin, parses options into the same config objects the Python API takes."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .app import (DEVICE_HELP, DTYPE_HELP, _data_dir, _execution, _own_data, app, console, friendly,
                      with_settings)
from ..core.errors import XlpromptError


def _refuse_existing_run(out: Path, overwrite: bool) -> None:
    if (out / "run.json").exists() and not overwrite:
        raise XlpromptError(f"{out} already holds a run: choose another --out or pass --overwrite.")


def _train_settings():
    from ..runs.config import flat_settings

    return {k: v for k, v in flat_settings().items() if v.cli}


def _method_notes() -> dict:
    from ..runs.config import method_defaults_note, method_option_settings

    return {name: method_defaults_note(name) for name in method_option_settings()}


@app.command()
@friendly
@with_settings(_train_settings, help_extra=_method_notes)
def train(
    settings: dict,
    data_dir: Optional[Path] = typer.Option(None, help="Data folder (env XLPROMPT_DATA); with --text-column your "
                                            "own data: a folder, a .tsv/.csv/.jsonl file or hf:DATASET."),
    text_column: Optional[str] = typer.Option(None, help="Own data: the text column (the task is then your data)."),
    text_pair_column: Optional[str] = typer.Option(None, help="Own data: the second text of a pair."),
    label_column: str = typer.Option("label", help="Own data: the label column."),
    language_column: Optional[str] = typer.Option(None, help="Own data in shared files: the language column."),
    split_column: Optional[str] = typer.Option(None, help="Own data in one file: the split column (train/dev/test)."),
    out: Path = typer.Option(..., help="Run folder to write."),
    overwrite: bool = typer.Option(False, help="Replace a run already in --out."),
    evaluate_langs: Optional[str] = typer.Option(None, "--evaluate", help="Also evaluate: all or a,b,c."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing",
                                                help="Recompute activations in the backward pass (less memory)."),
):
    """Train a prompt (and head) on one language; write the run folder. Under torchrun: data parallel.
    Every setting of a run is an option here (declared once, on TrainConfig and the method configs)."""
    from ..runs.config import config_from_settings
    from ..execution.distributed import main_process
    from ..models.classifier import plan_for_config
    from ..training.fit import fit

    _refuse_existing_run(out, overwrite)
    _execution(device, dtype)  # a device this machine lacks fails before the data is read
    custom = None
    task = settings["task"]
    if text_column:
        if task not in ("sib200", "custom"):
            raise XlpromptError(f"--text-column trains on your own data; drop --task {task}.")
        if data_dir is None:
            raise XlpromptError("--text-column reads your own data: pass --data-dir (a folder, a .tsv/.csv/.jsonl "
                                "file, or hf:DATASET).")
        settings["task"] = "custom"
        custom = {"path": _own_data(data_dir), "text_column": text_column, "text_pair_column": text_pair_column,
                  "label_column": label_column, "language_column": language_column, "split_column": split_column}
    settings["data_dir"] = None if custom else _data_dir(data_dir)
    config = config_from_settings(settings, custom=custom, strict=True)
    plan = plan_for_config(config, device=device, dtype=dtype, purpose="train")
    run = fit(config, gradient_checkpointing=gradient_checkpointing, plan=plan)
    if not main_process():  # torchrun: rank 0 writes the run
        return
    run.save(out)
    if run.info.get("probe"):
        probe = run.info["probe"]
        console.print(f"saved run to [bold]{out}[/] · linear probe, C {probe['C']:g} chosen on dev "
                      f"(accuracy {probe['dev_accuracy']:.3f}; per C: "
                      + ", ".join(f"{c} {a:.3f}" for c, a in probe["dev_accuracy_per_C"].items())
                      + f") · {run.info['train_seconds']:.1f}s")
        if evaluate_langs:
            _evaluate_and_show(run, evaluate_langs, out / "results.json")
        return
    best = run.curve[run.info["best_epoch"] - 1]
    scores = " · ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in best.items() if k.startswith("dev_"))
    speed = run.info["speed"]
    console.print(f"saved run to [bold]{out}[/] · best epoch {run.info['best_epoch']} · {scores} · "
                  f"{run.info['train_seconds']:.0f}s · {speed['train_examples_per_second']:.1f} train ex/s "
                  f"(median {speed['step_seconds_median']:.3f} s/step)")
    if evaluate_langs:
        _evaluate_and_show(run, evaluate_langs, out / "results.json")


@app.command()
@friendly
def adapt(
    run_dir: Path = typer.Argument(..., help="A trained run (prompt and head on the frozen model)."),
    language: str = typer.Option(..., help="The target language whose examples it continues on."),
    shots: int = typer.Option(..., help="Examples per class from the language's train split (dev: ⌈n/4⌉ per class "
                              "from its dev split; never its test split)."),
    out: Path = typer.Option(..., help="Run folder to write (servable beside the source run)."),
    epochs: int = typer.Option(10, help="Passes over the few examples."),
    lr: Optional[float] = typer.Option(None, help="Prompt learning rate (default: the source run's)."),
    seed: Optional[int] = typer.Option(None, help="Seed of the draw and the order (default: the source run's)."),
    overwrite: bool = typer.Option(False, help="Replace a run already in --out."),
    evaluate_langs: Optional[str] = typer.Option(None, "--evaluate", help="Also evaluate: all or a,b,c."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
):
    """Continue a trained run on a few examples of one target language: prompt and head only, the model
    frozen. One small run per language; `xlprompt serve` serves them side by side."""
    from ..training.adapt import adapt as _adapt

    _refuse_existing_run(out, overwrite)
    _execution(device, dtype)
    overrides = {k: v for k, v in {"epochs": epochs, "lr": lr, "seed": seed}.items() if v is not None}
    run = _adapt(run_dir, language, shots, device=device, dtype=dtype, **overrides)
    run.save(out)
    best = run.curve[run.info["best_epoch"] - 1]
    scores = " · ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in best.items() if k.startswith("dev_"))
    console.print(f"saved run to [bold]{out}[/] · {language}, {shots} per class, from {run_dir} · best epoch "
                  f"{run.info['best_epoch']} · {scores} · {run.info['train_seconds']:.1f}s")
    if evaluate_langs:
        _evaluate_and_show(run, evaluate_langs, out / "results.json")


def _evaluate_and_show(run, langs, out_json: Path):
    from ..evaluation.evaluate import evaluate as _evaluate
    from ..evaluation.evaluate import results_table, write_results

    results = _evaluate(run, langs)
    write_results(results, out_json)  # before the table: nothing that prints can lose the evaluation
    console.print(results_table(results))
    console.print(f"wrote {out_json} and {out_json.with_suffix('.csv')}")
    return results


def _evaluation_settings():
    from ..experiments.grid import eval_settings

    return {k: s for k, s in eval_settings().items() if k in ("languages", "split", "limit_per_language")}


@app.command()
@friendly
@with_settings(_evaluation_settings, defaults={"split": None})
def evaluate(
    settings: dict,
    run_dirs: list[Path] = typer.Argument(..., help="A run folder written by `xlprompt train` (several with "
                                          "--ensemble)."),
    ensemble: bool = typer.Option(False, "--ensemble", help="Average the class probabilities of the runs (one shared "
                                  "frozen model, all members' rows in the same mixed passes)."),
    out: Optional[Path] = typer.Option(None, help="Write results JSON (and a CSV beside it)."),
    task: Optional[str] = typer.Option(None, help="Score on another task with the same labels and format "
                                       "(an xquad run on mlqa); default: the run's task."),
    data_dir: Optional[Path] = typer.Option(None, help="Data folder (env XLPROMPT_DATA)."),
    sort: Optional[str] = typer.Option(None, help="Sort the table by a metric or 'language' (default: the "
                                       "task's first metric)."),
    max_tokens: Optional[int] = typer.Option(None, help="Padded tokens per batch (rows x longest row; default "
                                             "2048 on CPU, 65536 on a GPU); 0: no budget."),
    batch_size: Optional[int] = typer.Option(None, help="Most rows per batch (default: only the token budget). "
                                             "--batch-size 64 --max-tokens 0 is the old fixed policy."),
    token_cache: bool = typer.Option(True, "--token-cache/--no-token-cache",
                                     help="Reuse tokenized datasets (env XLPROMPT_TOKEN_CACHE names the folder)."),
    threads: str = typer.Option("auto", help="torch threads: auto (measured on the first batches, re-checked) "
                                "or a number."),
    precision: str = typer.Option("auto", help="auto | fp32 | int8 | int8-checked (CPU, frozen backbone only: "
                                  "int8, close calls rechecked in fp32) | bf16 | fp16 (autocast). auto: on CPU the "
                                  "fastest recipe measured on this machine that passed the accuracy guard (bf16 "
                                  "weights, int8-checked for 2,000+ rows of sentence classification, or fp32); "
                                  "`xlprompt plan` shows the choice and why."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    engine: str = typer.Option("auto", help="Backbone engine: auto | torch | onnx (ONNX Runtime on CPU; "
                               "pip install 'xlprompt[onnx]'). auto: see benchmarks/README.md."),
):
    """Zero-shot evaluation of a run (or an ensemble of runs) on many languages."""
    from ..evaluation.evaluate import check_sort, results_table, scoring_task, write_results
    from ..evaluation.evaluate import evaluate as _evaluate
    from ..models.classifier import plan_for_config
    from ..runs.run import Run

    _execution(device, dtype)  # a device this machine lacks fails first, before the run folder is read
    if len(run_dirs) > 1 and not ensemble:
        raise XlpromptError(f"{len(run_dirs)} runs given: pass --ensemble to average them, or evaluate one at a time.")
    if ensemble:
        return _evaluate_ensemble(run_dirs, settings, out, data_dir, sort, precision, engine, device, dtype)
    run_dir = run_dirs[0]
    speed = _speed_options(max_tokens, batch_size, token_cache, threads, precision, engine)
    token_cache = speed.pop("token_cache")
    plan = plan_for_config(Run.read_config(run_dir), device=device, dtype=dtype, purpose="evaluate", **speed)
    run = Run.load(run_dir, plan=plan)
    check_sort(sort, scoring_task(run.config, task).metric_names)
    data = _own_data(data_dir) if run.config.custom else _data_dir(data_dir)  # own data: a file is fine too
    results = _evaluate(run, settings["languages"], task=task, split=settings["split"], data_dir=data, plan=plan,
                        token_cache=token_cache, precision=precision, engine=engine,
                        limit_per_language=settings["limit_per_language"])
    target = out or (run_dir / "results.json")
    write_results(results, target)  # before anything that could fail: an evaluation can take an hour
    console.print(results_table(results, sort_by=sort))
    s = results["speed"]
    console.print(f"{s['sentences']} sentences in {s['seconds']['total']:.1f}s ({s['tokens_per_second']:.0f} tokens/s "
                  f"in the model) · {s['device_name']} {s['dtype']} · engine {s['engine']['used']} · "
                  f"precision {s['precision']['used']} · "
                  f"threads {s['threads']['final']} · "
                  f"padding {100 * s['padding_share']:.1f}%", highlight=False)
    console.print(f"wrote {target}")


def _evaluate_ensemble(run_dirs, settings, out, data_dir, sort, precision, engine, device, dtype):
    from ..evaluation.evaluate import check_sort, results_table, write_results
    from ..serving.ensemble import Ensemble, evaluate_ensemble
    from ..serving.served import check_serving_precision

    if out is None:
        raise XlpromptError("An ensemble's results go to --out FILE.json (no run folder is theirs alone).")
    members = Ensemble.from_runs(run_dirs, precision=check_serving_precision(precision), engine=engine,
                                 device=device, dtype=dtype)
    check_sort(sort, ["accuracy", "macro_f1"])
    results = evaluate_ensemble(members, settings["languages"], split=settings["split"], data_dir=_data_dir(data_dir),
                                limit_per_language=settings["limit_per_language"])
    write_results(results, out)
    console.print(results_table(results, sort_by=sort))
    console.print(f"ensemble of {len(run_dirs)} runs · {results['speed']['sentences']} sentences in "
                  f"{results['seconds']:.1f}s · precision {members.bank.precision} · wrote {out}", highlight=False)


def _speed_options(max_tokens, batch_size, token_cache, threads, precision, engine="auto") -> dict:
    from ..engine import check_engine
    from ..execution.inference import PRECISIONS

    if (max_tokens is not None and max_tokens < 0) or (batch_size is not None and batch_size < 1):
        raise XlpromptError("--max-tokens must be >= 0 and --batch-size >= 1.")
    if max_tokens == 0 and batch_size is None:
        raise XlpromptError("--max-tokens 0 drops the token budget: give --batch-size too.")
    if threads != "auto" and not (threads.isdigit() and int(threads) >= 1):
        raise XlpromptError(f"--threads takes auto or a number >= 1, got {threads!r}.")
    if precision not in PRECISIONS:
        raise XlpromptError(f"--precision takes one of {', '.join(PRECISIONS)}, got {precision!r}.")
    out = {"batch_size": batch_size, "token_cache": token_cache,
           "threads": threads if threads == "auto" else int(threads), "precision": precision,
           "engine": check_engine(engine), "max_tokens": "auto" if max_tokens is None else (max_tokens or None)}
    return out


@app.command()
@friendly
def tasks():
    """List the registered tasks."""
    from ..tasks import get_task, task_names

    for name in task_names():
        t = get_task(name)
        console.print(f"[bold]{name}[/]: {t.description} · labels: {', '.join(t.label_names)}")


@app.command()
@friendly
def languages(task: str = typer.Option("sib200"), data_dir: Optional[Path] = typer.Option(None)):
    """List a task's language codes with names and scripts."""
    from ..data.languages import language_info
    from ..data.pairs import language_name
    from ..tasks import get_task

    for code in get_task(task).languages(_data_dir(data_dir)):
        try:
            info = language_info(code)
            console.print(f"{code}\t{info.name}\t{info.script_name}")
        except XlpromptError:  # ISO 639-1 codes (xnli, pawsx) are not in the FLORES-200 table
            console.print("\t".join([code, *language_name(code)]))


def _quickstart_settings():
    from ..runs.config import flat_settings

    return {k: v for k, v in flat_settings().items() if k in ("prompt_length", "shots", "epochs", "seed")}


@app.command()
@friendly
@with_settings(_quickstart_settings, defaults={"prompt_length": 10, "epochs": 3},
               help_extra={"shots": " [default: all 701 sentences]"})
def quickstart(
    settings: dict,
    out: Path = typer.Option(Path("xlprompt-quickstart"), help="Folder for the run and the report."),
    langs: str = typer.Option("all"),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    engine: str = typer.Option("auto", help="Backbone engine of the evaluation: auto | torch | onnx."),
):
    """The main job: train a soft prompt on English SIB-200 with the offline default model, evaluate
    zero-shot on all 205 languages, print a table and a summary, write a report."""
    from ..engine import check_engine
    from .quickstart import run_quickstart

    run_quickstart(out=out, **settings, langs=langs, console=console, engine=check_engine(engine), **_execution(device, dtype))


@app.command()
@friendly
def export(
    run_dir: Path = typer.Argument(..., help="A run folder written by `xlprompt train`."),
    fmt: str = typer.Option("peft", "--format", help="Export format: peft (a PEFT adapter folder)."),
    out: Path = typer.Option(..., help="Adapter folder to write."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out folder."),
):
    """Export a run's prompt as a PEFT adapter; says what PEFT cannot represent."""
    from ..interop import export_peft

    if fmt != "peft":
        raise XlpromptError(f"Unknown export format {fmt!r}: the only format is peft.")
    report = export_peft(run_dir, out, overwrite=overwrite)
    console.print(escape(report.text()), soft_wrap=True, highlight=False)


@app.command("import-peft")
@friendly
def import_peft_cmd(
    adapter_dir: Path = typer.Argument(..., help="A PEFT prompt-tuning or prefix-tuning adapter folder."),
    out: Path = typer.Option(..., help="Run folder to write."),
    task: Optional[str] = typer.Option(None, help="Task (default: the adapter's xlprompt.json, else sib200)."),
    model: Optional[str] = typer.Option(None, help="Base model (default: the adapter's base_model_name_or_path)."),
    head: Optional[Path] = typer.Option(None, help="Encoders: RUN_DIR or head.safetensors with the trained head."),
    label_words: Optional[str] = typer.Option(None, help="Comma-separated verbalizer words (decoders)."),
    pooling: Optional[str] = typer.Option(None, help="Encoder head pooling: mean or first."),
    overwrite: bool = typer.Option(False, help="Replace an existing --out folder."),
):
    """Turn a PEFT prompt adapter into a run folder that `xlprompt evaluate` reads."""
    from ..interop import import_peft

    words = [w.strip() for w in label_words.split(",")] if label_words else None
    report = import_peft(adapter_dir, out, task=task, model=model, head=head, label_words=words,
                         pooling=pooling, overwrite=overwrite)
    console.print(escape(report.text()), soft_wrap=True, highlight=False)
