"""`xlprompt quickstart`: the whole study in one command on the offline default model."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..core import io


def summary_lines(results: dict, source: str = "eng_Latn", k: int = 5) -> list[str]:
    langs = results["languages"]
    ranked = sorted(langs.items(), key=lambda kv: -kv[1]["accuracy"])
    others = [m["accuracy"] for c, m in langs.items() if c != source]
    lines = []
    if source in langs:
        lines.append(f"{source} (training language) accuracy: {langs[source]['accuracy']:.3f}")
    lines.append(f"mean accuracy over {len(langs)} languages: {results['mean']['accuracy']:.3f} "
                 f"(macro-F1 {results['mean']['macro_f1']:.3f})")
    if others:
        lines.append(f"mean zero-shot accuracy over {len(others)} other languages: {sum(others) / len(others):.3f}")
    lines.append("best: " + ", ".join(f"{c} {m['accuracy']:.3f}" for c, m in ranked[:k]))
    lines.append("worst: " + ", ".join(f"{c} {m['accuracy']:.3f}" for c, m in ranked[-k:]))
    return lines


STAGING = ".quickstart-staging"
OUTPUTS = ("run", "results.json", "results.csv", "report.md")  # moved in this order: report.md marks them whole


def publish(stage: Path, out: Path, names) -> None:
    """Move `names` from `stage` into `out`, replacing what is there, then remove the stage. report.md goes
    last and is removed first, so a folder holding report.md holds one quickstart's outputs."""
    (out / names[-1]).unlink(missing_ok=True)
    for name in names:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        if (stage / name).exists():
            (stage / name).replace(target)
    io.fsync_folder(out)
    shutil.rmtree(stage, ignore_errors=True)


def run_quickstart(out: Path, prompt_length: int = 10, shots: int | None = None, epochs: int = 3,
                   seed: int = 0, langs: str = "all", console=None, progress: bool = True, device=None,
                   dtype=None, engine: str = "auto") -> dict:
    from ..runs.config import TrainConfig
    from ..evaluation.evaluate import evaluate, results_table, write_results
    from ..models.classifier import plan_for_config
    from ..prompts.config import InputPromptConfig
    from ..training.fit import fit

    started = time.perf_counter()
    say = console.print if console else print
    config = TrainConfig(method=InputPromptConfig(prompt_length=prompt_length), shots=shots, epochs=epochs, seed=seed)
    # both plans before anything is written (a missing GPU fails here); the evaluation's may differ from the
    # training's in dtype (int8-checked evaluates over fp32 weights) and then evaluate casts the backbone
    train_plan = plan_for_config(config, device=device, dtype=dtype, purpose="train")
    eval_plan = plan_for_config(config, device=train_plan.device, dtype=dtype, engine=engine, purpose="evaluate")
    say(f"[bold]xlprompt quickstart[/]: soft prompt (L={prompt_length}) on English SIB-200 "
        f"({'all' if shots is None else shots} samples per class, {epochs} epochs), model "
        f"{config.model} frozen; then zero-shot on {langs} languages.")
    # everything is written into a staging folder and moved into OUT at the end, report.md last: an
    # interrupted quickstart leaves an earlier one's outputs whole, never a mix of the two
    out = Path(out)
    stage = out / STAGING
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    run = fit(config, progress=progress, plan=train_plan)
    run.save(stage / "run")
    run_dir = out / "run"
    results = evaluate(run, langs, progress=progress, engine=engine, plan=eval_plan)
    results["wall_seconds"] = time.perf_counter() - started
    results["run"] = str(run_dir)
    write_results(results, stage / "results.json")
    if console:
        console.print(results_table(results))
    lines = summary_lines(results)
    lines.append(f"wall time: {results['wall_seconds'] / 60:.1f} min "
                 f"(training {run.info['train_seconds']:.0f}s in {run.info['speed']['dtype']} weights, "
                 f"evaluation {results['seconds']:.0f}s) on "
                 f"{results['speed']['device_name']} ({results['speed']['dtype']} weights, precision "
                 f"{results['speed']['precision']['used']}, "
                 f"engine {results['speed']['engine']['used']})")
    report = ["# xlprompt quickstart report", "", f"run folder: `{run_dir}`", "",
              "```", *lines, "```", "", "Per-language results: `results.json`, `results.csv`.", ""]
    io.write_text(stage / "report.md", "\n".join(report))
    publish(stage, out, OUTPUTS)
    for line in lines:
        say(line)
    say(f"wrote {Path(out) / 'report.md'}, {Path(out) / 'results.json'}, {Path(out) / 'results.csv'}")
    return results
