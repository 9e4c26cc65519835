"""The converged linear probe: a head-only run as an L2-regularised logistic regression on frozen features.

The backbone does not change in a head-only run, so epochs of backpropagation through it only approach
the optimum of a convex problem that can be solved directly. Here the training and dev sentences are
pooled once (features.py, cached), scikit-learn's lbfgs fits the multinomial logistic regression
(objective `0.5 * ||W||^2 + C * sum of cross-entropies`, bias unpenalised; two classes: the binary
model, written as logits [0, w.x + b]) to convergence for every C of the method's grid, and the C with
the best dev accuracy is kept (ties: the smaller C, the stronger regularisation). The result is the
same `PooledLinearHead` weights a trained head has, so the run folder, `evaluate`, PEFT export and
serving treat it as any head-only run.

`init_head_from_probe` gives a prompt run the same probe as its starting head (`head_init="probe"`).
"""
from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from ..core.errors import XlpromptError
from ..evaluation.features import feature_cache_for
from ..models.heads import PooledLinearHead
from ..prompts.config import PROBE_C_GRID
from ..runs.run import Run
from ..data.token_cache import default_token_cache

MAX_ITER = 10_000
TOL = 1e-6
MISSING_CLASS_BIAS = -1e4  # a class absent from the training rows is never predicted


def fit_logistic(x: np.ndarray, y: np.ndarray, C: float, num_labels: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(weight (labels x d), bias (labels,), info) of the L2 logistic regression at `C`, as float64."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, dtype=np.int64)
    classes = np.unique(y)
    if len(classes) < 2:
        raise XlpromptError(f"A linear probe needs training rows of at least two classes; got only {classes.tolist()}.")
    if classes.min() < 0 or classes.max() >= num_labels:
        raise XlpromptError(f"Training labels {classes.tolist()} fall outside the task's {num_labels} labels.")
    clf = LogisticRegression(C=C, solver="lbfgs", max_iter=MAX_ITER, tol=TOL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(np.asarray(x, dtype=np.float64), y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    weight = np.zeros((num_labels, x.shape[1]))
    bias = np.full(num_labels, MISSING_CLASS_BIAS)
    if len(classes) == 2:  # sklearn's binary model: p(second) = sigmoid(w.x + b), i.e. logits [0, w.x + b]
        bias[classes[0]] = 0.0
        weight[classes[1]], bias[classes[1]] = clf.coef_[0], clf.intercept_[0]
    else:
        weight[classes], bias[classes] = clf.coef_, clf.intercept_
    return weight, bias, {"iterations": int(np.max(clf.n_iter_)), "converged": converged}


def logits_of(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64) @ weight.T + bias


def cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def select_c(train_x, train_y, dev_x, dev_y, grid, num_labels: int, score) -> tuple[float, list[dict], dict]:
    """Fit every C of `grid`; keep the best dev accuracy, ties to the smaller C. `score(logits)` gives the
    task's dev metrics. Returns (chosen C, one curve entry per C, {C: (weight, bias)})."""
    curve, fitted = [], {}
    best_c, best_acc = None, -np.inf
    for c in sorted(grid):
        weight, bias, how = fit_logistic(train_x, train_y, c, num_labels)
        fitted[c] = (weight, bias)
        dev_logits = logits_of(dev_x, weight, bias)
        metrics = score(dev_logits)
        entry = {"C": c, "train_loss": cross_entropy(logits_of(train_x, weight, bias), train_y),
                 "dev_loss": cross_entropy(dev_logits, dev_y),
                 **{f"dev_{k}": v for k, v in metrics.items() if k != "n"}, **how}
        curve.append(entry)
        if entry["dev_accuracy"] > best_acc:  # strictly better: a tie keeps the smaller C
            best_c, best_acc = c, entry["dev_accuracy"]
    return best_c, curve, fitted


def _linear_head(model) -> PooledLinearHead:
    if not isinstance(model.head, PooledLinearHead):
        raise XlpromptError(f"A linear probe needs a linear head over a pooled vector; this model has a "
                            f"{type(model.head).__name__} (decoders with label words score words: pass "
                            "--method head for a probe on the label position, or head_init='random').")
    return model.head


def probe_head(model, task, train, dev, c_grid, max_length: int, token_cache=True) -> tuple[list, dict]:
    """Fit the probe on the unprompted frozen model's pooled features of `train` = (frame, encoded),
    choose C on `dev`, and load it into the model's head. Returns (curve, info)."""
    head = _linear_head(model)
    started = time.perf_counter()
    cache = feature_cache_for(default_token_cache(token_cache))
    (train_df, train_set), (dev_df, dev_set) = train, dev
    train_x = cache.features(model.backbone, head, task, train_df, train_set, max_length)
    dev_x = cache.features(model.backbone, head, task, dev_df, dev_set, max_length)
    featured = time.perf_counter()
    train_y, dev_y = np.asarray(train_set.labels), np.asarray(dev_set.labels)

    def score(logits):
        return task.score(dev_df, dev_set, list(logits.astype(np.float32)))

    chosen, curve, fitted = select_c(train_x, train_y, dev_x, dev_y, c_grid, task.num_labels, score)
    weight, bias = fitted[chosen]
    with torch.no_grad():
        head.linear.weight.copy_(torch.from_numpy(weight))
        head.linear.bias.copy_(torch.from_numpy(bias))
    best = next(c for c in curve if c["C"] == chosen)
    info = {"solver": "lbfgs (scikit-learn LogisticRegression)", "C": chosen,
            "dev_accuracy": best["dev_accuracy"], "dev_loss": best["dev_loss"],
            "dev_accuracy_per_C": {str(c["C"]): c["dev_accuracy"] for c in curve},
            "dev_loss_per_C": {str(c["C"]): c["dev_loss"] for c in curve},
            "iterations": best["iterations"], "converged": best["converged"],
            "feature_seconds": featured - started, "fit_seconds": time.perf_counter() - featured,
            "feature_cache": {k: v for k, v in cache.stats.items() if k.endswith("hits") or k in ("misses", "writes")}}
    return curve, info


def fit_probe(config, model, task, train, dev) -> Run:
    """A head-only run by the converged probe (called by `fit` once the data is loaded and encoded)."""
    started = time.perf_counter()
    model.backbone.requires_grad_(False)
    curve, probe = probe_head(model, task, train, dev, config.method.c_grid, config.max_length)
    model.eval()
    info = {"best_epoch": None, "probe": probe, "dev_accuracy": probe["dev_accuracy"],
            "train_examples": len(train[1]), "dev_examples": len(dev[1]),
            "trained_parameters": sum(p.numel() for p in model.head.parameters()),
            "train_seconds": time.perf_counter() - started}
    return Run(config=config, model=model, curve=curve, info=info)


def init_head_from_probe(model, task, train, dev, config) -> dict:
    """`head_init="probe"`: start a prompt run's head from the converged probe (returns the probe's info)."""
    _, info = probe_head(model, task, train, dev, PROBE_C_GRID, config.max_length)
    return info
