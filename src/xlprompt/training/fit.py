"""`fit`: one training loop for every method, readable top to bottom."""
from __future__ import annotations

import copy
import math
import random
import time

import numpy as np
import torch

from ..evaluation.evaluate import predict_outputs
from ..models.heads import head_loss
from ..core.errors import XlpromptError
from ..data.sampling import multilingual_splits
from ..runs.config import TrainConfig, source_languages, target_languages
from ..execution.device import device_info, reset_peak_memory, to_device
from ..execution.distributed import Replicas
from ..models.classifier import build_classifier, plan_for_config
from .probe import fit_probe, init_head_from_probe
from ..core.progress import progress_bar
from ..runs.run import Run, materialize_method
from ..runs.state import load_backbone_state, load_trainable_state  # noqa: F401  (re-exported)
from ..tasks.custom import get_task_for


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(model, config: TrainConfig) -> list[dict]:
    """Which parameters train, and at which rate: the freezing policy lives here and only here."""
    model.backbone.requires_grad_(not config.freeze_model)
    groups = [{"params": list(model.head.parameters()), "lr": config.head_lr}]
    if config.head_weight_decay is not None:  # regularise the head alone, as the probe's L2 does
        groups[0]["weight_decay"] = config.head_weight_decay
    if model.method is not None:
        groups.append({"params": list(model.method.parameters()), "lr": config.lr})
    if not config.freeze_model:
        groups.append({"params": list(model.backbone.parameters()), "lr": config.model_lr})
    return [g for g in groups if g["params"] and any(p.requires_grad for p in g["params"])]


def dev_scores(model, task, frame, encoded, batch_size: int) -> tuple[float, dict]:
    """Mean dev loss (per target, as in training) and the task's dev metrics, from one pass."""
    outputs, loss = predict_outputs(model, encoded, batch_size, with_loss=True)
    return loss, task.score(frame, encoded, outputs)


def fit(config: TrainConfig | None = None, *, model=None, progress: bool = True, device=None, dtype=None,
        gradient_checkpointing: bool = False, plan=None, **overrides) -> Run:
    """Train the method `config` describes; keep the epoch with the best dev loss; return a Run.

    `model` may pass an already loaded PromptedClassifier (tests, sweeps reusing a backbone).
    `device`/`dtype`/`gradient_checkpointing`: how the run executes, never part of the run; `plan`: a
    resolved execution plan instead of `device`/`dtype` (execution/plan.py: dtype auto is bf16 weights for
    a frozen backbone on a CPU where bf16 is native and measured fast; prompt and head train in fp32).
    Under torchrun every process trains on its share of each batch (distributed.py).
    """
    config = config or TrainConfig(**overrides)
    if model is None:
        plan = plan or plan_for_config(config, device=device, dtype=dtype, purpose="train")
        target = plan.device
    else:
        target = model.backbone.device
    replicas = Replicas.from_env(target)
    task = get_task_for(config)  # own data: resolves and records label names in config.custom
    sources, targets = source_languages(config, task), target_languages(config, task)
    seed_everything(config.seed)
    splits = {"train": task.train_split, "dev": task.dev_split}
    train_df, dev_df = multilingual_splits(lambda split, language: task.load(splits[split], language, config.data_dir),
                                           sources, config.shots, config.seed, targets, config.target_shots)

    if model is None and config.start is not None:  # continue a saved run: its prompt and head
        model = start_model(config, plan)
    model = model or build_classifier(config, task, plan=plan, gradient_checkpointing=gradient_checkpointing)
    where = model.backbone.device
    reset_peak_memory(where)
    # fp16 gradients underflow without loss scaling; bf16 and fp32 need none (then the scaler is a no-op)
    scaler = torch.amp.GradScaler(where.type, enabled=where.type == "cuda" and torch.float16 in (
        model.backbone.dtype, model.autocast_dtype))
    collate = model.collator()
    tokenizer = model.backbone.tokenizer
    train_set = task.encode(tokenizer, train_df, config.max_length)
    dev_set = task.encode(tokenizer, dev_df, config.max_length)

    if config.method.fits_by_probe:  # head only: the converged linear probe, no epochs
        return fit_probe(config, model, task, (train_df, train_set), (dev_df, dev_set))
    head_init = None
    if config.head_init == "probe" and config.start is None:  # the head starts at the probe on the unprompted model
        head_init = init_head_from_probe(model, task, (train_df, train_set), (dev_df, dev_set), config)

    optimizer = torch.optim.AdamW(param_groups(model, config), weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_set) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(config.warmup * total_steps)

    def lr_scale(step: int) -> float:  # linear warmup, then linear decay to 0 (HF's default schedule)
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_scale)
    order_rng = np.random.default_rng(config.seed)
    curve, best_loss, best_state, step = [], math.inf, None, 0
    step_seconds: list[float] = []  # collate + forward + backward + optimizer, per step (no dev evaluation)
    started = time.perf_counter()
    with progress_bar(progress) as bar:
        task_id = bar.add_task("training", total=total_steps, info="")
        for epoch in range(1, config.epochs + 1):
            model.train()
            epoch_loss, seen, epoch_start, epoch_steps = 0.0, 0, time.perf_counter(), len(step_seconds)
            order = order_rng.permutation(len(train_set)).tolist()
            for start in range(0, len(order), config.batch_size):
                t0 = time.perf_counter()
                rows = order[start:start + config.batch_size]
                optimizer.zero_grad(set_to_none=True)
                if replicas.active:
                    loss = replica_loss(model, collate, train_set, rows, replicas)
                else:
                    batch = to_device(collate(train_set, rows), where)
                    loss = head_loss(model(batch), batch.labels)
                scaler.scale(loss).backward()
                replicas.sum_gradients(model.parameters())
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                loss_value = replicas.sum(loss).item()  # synchronises, so the step's time is all in
                step_seconds.append(time.perf_counter() - t0)
                step += 1
                epoch_loss += loss_value * len(rows)
                seen += len(rows)
                recent = step_seconds[-20:]  # the bar shows the current speed, not the epoch's average
                bar.update(task_id, advance=1,
                           info=f"epoch {epoch}/{config.epochs} loss {loss_value:.3f} "
                                f"{len(rows) * len(recent) / sum(recent):.1f} ex/s {np.median(recent):.3f} s/step")
            epoch_step_seconds = sum(step_seconds[epoch_steps:])
            dev_loss, dev_metrics = dev_scores(model, task, dev_df, dev_set, config.eval_batch_size)
            primary = task.metric_names[0]
            elapsed = time.perf_counter() - epoch_start
            curve.append({"epoch": epoch, "step": step, "train_loss": epoch_loss / max(seen, 1),
                          "dev_loss": dev_loss,
                          **{f"dev_{k}": v for k, v in dev_metrics.items() if k != "n"},
                          "seconds": elapsed, "examples_per_second": seen / elapsed,
                          "train_examples_per_second": seen / max(epoch_step_seconds, 1e-9)})
            if dev_loss < best_loss:
                best_loss = dev_loss
                best_state = copy.deepcopy(model.trainable_state())
                if not config.freeze_model:
                    best_state["backbone"] = copy.deepcopy(model.backbone.model.state_dict())
            bar.update(task_id, info=f"epoch {epoch}/{config.epochs} dev loss {dev_loss:.3f} "
                                     f"{primary} {dev_metrics[primary]:.3f}")
    load_trainable_state(model, best_state)
    trained_parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)  # incl. reparam nets
    materialize_method(model)  # fold reparameterization away now that the best epoch is back
    model.eval()
    info = {"best_epoch": min(curve, key=lambda c: c["dev_loss"])["epoch"],
            "train_examples": len(train_set), "dev_examples": len(dev_set),
            "trained_parameters": trained_parameters,
            "train_seconds": time.perf_counter() - started,
            "speed": {**training_speed(step_seconds, len(train_set) * config.epochs),
                      **device_info(where, model.autocast_dtype or model.backbone.dtype),
                      "processes": replicas.world, "gradient_checkpointing": gradient_checkpointing,
                      **({"plan": plan.to_dict()} if plan is not None else {})}}
    if head_init is not None:
        info["head_init_probe"] = head_init
    if len(sources) > 1 or targets:  # what the run learned from, per language (the config says how)
        info["train_languages"] = {str(k): int(v) for k, v in train_df["language"].value_counts(sort=False).items()}
    return Run(config=config, model=model, curve=curve, info=info)


def start_model(config: TrainConfig, plan):
    """The model of the run `config.start` names, to train further: same model and task, frozen."""
    start = Run.load(config.start, plan=plan)
    if (start.config.model, start.config.task) != (config.model, config.task):
        raise XlpromptError(f"--start {config.start} is a {start.config.task} run on {start.config.model}; this "
                            f"run is {config.task} on {config.model}.")
    if not start.config.freeze_model:
        raise XlpromptError(f"--start {config.start} trained the model itself: only a prompt and head on the frozen "
                            "model can be continued.")
    return start.model


def replica_loss(model, collate, dataset, rows: list[int], replicas: Replicas) -> torch.Tensor:
    """This process's part of the global batch's mean loss: its targets' summed loss over all targets."""
    mine = replicas.shard(rows)
    where = model.backbone.device
    batch = to_device(collate(dataset, mine), where) if mine else None
    targets = (batch.labels != -100).sum() if mine else torch.zeros((), dtype=torch.long, device=where)
    total = replicas.sum(targets).clamp_min(1)  # every process joins, with or without rows
    if not mine:  # nothing here this step: a zero loss that still joins the gradient sum
        return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
    return head_loss(model(batch), batch.labels, reduction="sum") / total


def training_speed(step_seconds: list[float], examples: int) -> dict:
    """Examples/s over the optimisation steps alone (dev evaluation and setup excluded) and the step-time
    distribution; the first step pays one-off allocations, so the median is the steady-state figure."""
    seconds = np.asarray(step_seconds, dtype=np.float64)
    total = float(seconds.sum())
    return {"train_examples_per_second": examples / total if total else None, "steps": int(len(seconds)),
            "step_seconds_total": total,
            "step_seconds_mean": float(seconds.mean()) if len(seconds) else None,
            "step_seconds_median": float(np.median(seconds)) if len(seconds) else None,
            "step_seconds_p90": float(np.percentile(seconds, 90)) if len(seconds) else None,
            "torch_threads": torch.get_num_threads()}
