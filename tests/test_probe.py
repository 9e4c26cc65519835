"""The converged linear probe (head-only runs), its feature cache, and head_init='probe' for prompt runs."""
import json

import numpy as np
import pytest
import torch

from xlprompt import TrainConfig, fit, load
from xlprompt.core.errors import XlpromptError
from xlprompt.experiments.grid import expand_grid, run_id
from xlprompt.evaluation.features import FeatureCache, pooled_features
from xlprompt.training.probe import fit_logistic, select_c
from xlprompt.prompts.config import HeadOnlyConfig, InputPromptConfig


def gradient_norm(x, y, weight, bias, C, binary):
    """Relative norm of the gradient of 0.5 ||w||^2 + C * sum(cross-entropy) at (weight, bias): 0 at the optimum."""
    x = x.astype(np.float64)
    if binary:  # sklearn's binary model: one weight vector (row 1; row 0 is zero)
        w, b = weight[1], bias[1]
        p = 1 / (1 + np.exp(-(x @ w + b)))
        r = p - y
        gw, gb = C * x.T @ r + w, C * r.sum()
        scale = C * np.abs(x).sum() + 1
        return float(np.sqrt((gw ** 2).sum() + gb ** 2) / scale)
    z = x @ weight.T + bias
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    r = p - np.eye(weight.shape[0])[y]
    gw, gb = C * r.T @ x + weight, C * r.sum(0)
    scale = C * np.abs(x).sum() + 1
    return float(np.sqrt((gw ** 2).sum() + (gb ** 2).sum()) / scale)


def toy_problem(classes, n=120, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1.5, (classes, d))
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.normal(0, 1, (n, d))).astype(np.float32), y


@pytest.mark.parametrize("classes", [2, 3, 7])
@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_probe_reaches_the_optimum(classes, C):
    x, y = toy_problem(classes)
    weight, bias, info = fit_logistic(x, y, C, classes)
    assert info["converged"]
    assert gradient_norm(x, y, weight, bias, C, binary=classes == 2) < 1e-5
    # a perturbed head is worse on the objective: the stationary point is the minimum (convex problem)
    def objective(w, b):
        z = x.astype(np.float64) @ w.T + b
        z -= z.max(1, keepdims=True)
        ce = -(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).sum()
        return 0.5 * (w ** 2).sum() + C * ce
    if classes > 2:
        nudged = weight + np.random.default_rng(1).normal(0, 1e-3, weight.shape)
        assert objective(nudged, bias) > objective(weight, bias)


def test_probe_gives_absent_classes_no_votes():
    x, y = toy_problem(3)
    y = np.where(y == 1, 0, y)  # class 1 never seen
    weight, bias, _ = fit_logistic(x, y, 1.0, 3)
    assert ((x @ weight.T + bias).argmax(1) != 1).all()
    with pytest.raises(XlpromptError, match="two classes"):
        fit_logistic(x, np.zeros_like(y), 1.0, 3)


def test_c_is_chosen_on_dev_with_ties_to_stronger_regularisation():
    x, y = toy_problem(3)
    grid = [10.0, 0.1, 1.0]
    chosen, curve, fitted = select_c(x, y, x, y, grid, 3, lambda logits: {"accuracy": 0.5, "n": len(y)})
    assert chosen == 0.1 and [c["C"] for c in curve] == [0.1, 1.0, 10.0]
    accuracy = {0.1: 0.4, 1.0: 0.9, 10.0: 0.9}
    scores = iter(accuracy[c] for c in sorted(grid))
    chosen, curve, _ = select_c(x, y, x, y, grid, 3, lambda logits: {"accuracy": next(scores)})
    assert chosen == 1.0
    assert [c["dev_accuracy"] for c in curve] == [0.4, 0.9, 0.9]


def probe_config(model_dir, **kw):
    return TrainConfig(task="toy", model=str(model_dir), method=HeadOnlyConfig(**kw), seed=0)


@pytest.mark.parametrize("family", ["bert", "xglm"])
def test_probe_run_fits_sklearn_on_the_models_features_and_round_trips(family, tiny_model_dir, toy_task, tmp_path):
    from sklearn.linear_model import LogisticRegression

    run = fit(probe_config(tiny_model_dir(family)), progress=False)
    probe = run.info["probe"]
    assert run.info["best_epoch"] is None and set(probe["dev_accuracy_per_C"]) == {
        str(c) for c in HeadOnlyConfig().c_grid}
    assert probe["converged"] and probe["dev_accuracy"] == max(probe["dev_accuracy_per_C"].values())
    # the head is sklearn's fit on the same pooled features, at the chosen C
    frame = toy_task.load("train", "eng_Latn")
    encoded = toy_task.encode(run.model.backbone.tokenizer, frame, 128)
    x = pooled_features(run.model.backbone, run.model.head.pool, encoded)
    ref = LogisticRegression(C=probe["C"], max_iter=10_000, tol=1e-8).fit(x.astype(np.float64), frame["label"])
    head = run.model.head.linear
    ours = (x @ head.weight.detach().numpy().T + head.bias.detach().numpy())
    theirs = ref.decision_function(x.astype(np.float64))
    np.testing.assert_allclose(ours[:, 1] - ours[:, 0], theirs, atol=1e-3)
    # save / load / evaluate like any run; the feature path and the model path agree
    run.save(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["files"] == ["head.safetensors"] and meta["info"]["probe"]["C"] == probe["C"]
    again = load(tmp_path / "run")
    fast = again.evaluate("all", progress=False)
    slow = again.evaluate("all", progress=False, features=False)
    for code in ("eng_Latn", "deu_Latn"):
        assert fast["languages"][code]["accuracy"] == pytest.approx(slow["languages"][code]["accuracy"])
    assert fast["languages"] == run.evaluate("all", progress=False)["languages"]


def test_feature_cache_hits_and_ignores_damaged_entries(tiny_model_dir, toy_task, tmp_path):
    run = fit(probe_config(tiny_model_dir("bert")), progress=False)
    frame = toy_task.load("test", "deu_Latn")
    enc = toy_task.encode(run.model.backbone.tokenizer, frame, 128)
    first = FeatureCache(tmp_path, memory=False)
    a = first.features(run.model.backbone, run.model.head, toy_task, frame, enc, 128)
    second = FeatureCache(tmp_path, memory=False)
    b = second.features(run.model.backbone, run.model.head, toy_task, frame, enc, 128)
    assert first.stats["misses"] == 1 and second.stats["disk_hits"] == 1
    np.testing.assert_array_equal(a, b)
    for path in tmp_path.rglob("*.safetensors"):
        path.write_bytes(path.read_bytes()[:-4] + b"junk")
    third = FeatureCache(tmp_path, memory=False)
    np.testing.assert_array_equal(third.features(run.model.backbone, run.model.head, toy_task, frame, enc, 128), a)
    assert third.stats["misses"] == 1
    # a changed backbone is another entry, not a stale hit
    with torch.no_grad():
        next(run.model.backbone.parameters()).add_(0.5)
    fourth = FeatureCache(tmp_path, memory=False)
    c = fourth.features(run.model.backbone, run.model.head, toy_task, frame, enc, 128)
    assert fourth.stats["misses"] == 1 and not np.array_equal(a, c)


def test_adamw_head_is_still_reachable(tiny_model_dir, toy_task):
    config = TrainConfig(task="toy", model=str(tiny_model_dir("bert")), method=HeadOnlyConfig(solver="adamw"),
                         epochs=2)
    run = fit(config, progress=False)
    assert len(run.curve) == 2 and run.info["best_epoch"] in (1, 2) and "probe" not in run.info
    with pytest.raises(XlpromptError, match="solver"):
        HeadOnlyConfig(solver="sgd")


def test_probe_head_init_for_prompt_runs(tiny_model_dir, toy_task):
    base = dict(task="toy", model=str(tiny_model_dir("bert")), method=InputPromptConfig(prompt_length=2), epochs=1,
                lr=0.0, head_lr=0.0, warmup=0.0)
    probe = fit(TrainConfig(task="toy", model=base["model"], method=HeadOnlyConfig()), progress=False)
    run = fit(TrainConfig(**base, head_init="probe"), progress=False)
    assert run.info["head_init_probe"]["C"] == probe.info["probe"]["C"]
    for name, value in probe.model.head.state_dict().items():  # nothing trained at lr 0: the head is the probe
        torch.testing.assert_close(run.model.head.state_dict()[name], value)
    plain = fit(TrainConfig(**base), progress=False)
    assert not torch.equal(plain.model.head.linear.weight, run.model.head.linear.weight)
    with pytest.raises(XlpromptError, match="head_init"):
        TrainConfig(**base, head_init="zeros")
    with pytest.raises(XlpromptError, match="linear head"):
        fit(TrainConfig(**{**base, "model": str(tiny_model_dir("xglm"))}, head_init="probe"), progress=False)


def test_ids_of_earlier_runs_are_unchanged():
    """Prompt runs and AdamW head runs keep the ids they had before the probe; probe runs are new runs."""
    grid = {"fixed": {"task": "sib200", "model": "multilingual-e5-small", "languages": ["eng_Latn"]},
            "axes": [{"method": ["head"], "solver": ["adamw", "lbfgs"]}, {"method": ["prompt"]}]}
    adamw, lbfgs, prompt = expand_grid(grid)
    before = adamw.to_dict()
    before["config"]["method"] = {"type": "head"}  # what a head run's spec held before solver existed
    del before["config"]["head_init"]
    assert run_id(before) == adamw.run_id != lbfgs.run_id
    old_prompt = prompt.to_dict()
    del old_prompt["config"]["head_init"]
    assert run_id(old_prompt) == prompt.run_id


def test_probe_runs_sweep_into_a_store_sharing_features(tiny_model_dir, toy_task, tmp_path):
    from xlprompt.experiments import load_store, run_sweep

    grid = {"fixed": {"task": "toy", "model": str(tiny_model_dir("bert")), "method": "head",
                      "languages": ["deu_Latn", "eng_Latn"]},
            "axes": {"shots": [8, "all"], "seed": [0, 1]}}
    specs = expand_grid(grid)
    assert run_sweep(specs, tmp_path / "store", progress=False).complete
    frame = load_store(tmp_path / "store")
    assert set(frame["method"]) == {"head"} and frame["best_epoch"].isna().all()
    assert frame["dev_accuracy"].notna().all() and frame["accuracy"].between(0, 1).all()
    runs = frame.drop_duplicates("run_id")
    full = runs[runs["shots"].isna()]
    assert len(full) == 2 and full["dev_accuracy"].nunique() == 1  # all the data: the seed changes nothing


def test_cli_trains_a_probe_and_an_adamw_head(tiny_model_dir, toy_task, tmp_path):
    from typer.testing import CliRunner

    from xlprompt.cli import app

    runner = CliRunner()
    base = ["train", "--task", "toy", "--model", str(tiny_model_dir("bert")), "--method", "head"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "probe"), "--evaluate", "all"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())  # rich wraps long tmp paths at the console width
    assert "linear probe, C" in said and "deu_Latn" in said
    info = json.loads((tmp_path / "probe" / "run.json").read_text())["info"]
    assert info["probe"]["C"] in HeadOnlyConfig().c_grid
    res = runner.invoke(app, [*base, "--solver", "adamw", "--epochs", "1", "--out", str(tmp_path / "adamw")])
    assert res.exit_code == 0 and "best epoch 1" in " ".join(res.output.split())
    config = json.loads((tmp_path / "adamw" / "config.json").read_text())
    assert config["method"]["solver"] == "adamw"


def test_head_runs_saved_before_the_probe_load_as_adamw():
    """A config.json/spec.json written before `solver` existed describes an AdamW head: it must not be
    reported (or rerun) as the probe, and its run id must stay what it was."""
    from xlprompt.runs.config import TrainConfig
    from xlprompt.experiments.grid import RunSpec

    old = TrainConfig(method=HeadOnlyConfig(solver="adamw")).to_dict()
    del old["method"]["solver"], old["method"]["c_grid"]
    assert TrainConfig.from_dict(old).method.solver == "adamw"
    spec = RunSpec.from_dict({"config": old, "languages": ["eng_Latn"], "split": "test"})
    assert spec.run_id == RunSpec(TrainConfig(method=HeadOnlyConfig(solver="adamw")), ["eng_Latn"]).run_id
