"""One execution plan: where and how a run executes, resolved once on the machine at hand, with reasons.

Device, the frozen backbone's dtype, the engine, the precision, the torch threads and the token budget are
how a run executes, never what it is: none of them enters a run id or a run folder. `resolve` turns the
requested settings (each "auto" or explicit) into an `ExecutionPlan`, a frozen record that carries the
reason for every choice; `fit`, `evaluate`, `Run.predict`, `serve`, `quickstart` and `sweep` take it (or
build it from the same keyword arguments), and the results' `speed` block records it.

"auto" on a CPU, for a frozen backbone, picks among the recipes below by measurement on this CPU
(machine.py times one layer at the backbone's shapes in fp32, bf16 and int8, once per CPU and torch
version) the fastest one that has passed the accuracy guard over all 205 SIB-200 languages (mean within
0.5 points of fp32, no language below -2; engine/guard.py). A recipe replaces fp32 only when its estimate
is at least `MARGIN` times fp32's, and one recipe replaces another only by the same margin, else the
order below decides, so a noisy probe near a line cannot flip the default between processes.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import torch

from .device import (CPU_MAX_TOKENS, GPU_MAX_TOKENS, dtype_name, local_rank_device, resolve_device,
                      resolve_dtype)
from ..core.errors import XlpromptError
from . import machine

MARGIN = 1.15
# int8-checked runs every row in int8 and about this share again in fp32 (9.5 % over 205 languages)
RECHECK_SHARE = 0.10
PURPOSES = ("evaluate", "train", "serve", "sweep")


@dataclass(frozen=True)
class Recipe:
    """A way to run a frozen backbone on CPU: its weights' dtype, the precision over them, the probe
    candidate that times it, the guard it passed (None for the fp32 reference), and whether training a
    prompt over it passed the guard too (`trains`: the evidence, or None: training stays fp32 unless asked).
    """

    name: str
    dtype: torch.dtype
    precision: str
    probe: str
    guard: str | None
    trains: str | None = None
    not_for_training: str = ""

    def blocker(self, identity: dict) -> str | None:
        """Why this recipe cannot run on this CPU, or None."""
        if self.probe == "bf16" and not machine.native_bf16(identity):
            return "no native bf16 (AMX or AVX-512 BF16) on this CPU"
        if self.probe == "int8":
            from ..engine.int8_token import int8_matmul_available

            if not int8_matmul_available():
                return f"torch {torch.__version__} has no CPU int8 matmul"
        return None

    def estimate(self, speedup: dict) -> float | None:
        """Estimated whole-pass speed-up over fp32 from the probe's per-layer speed-ups."""
        s = speedup.get(self.probe)
        if not s:
            return None
        return 1.0 / (1.0 / s + RECHECK_SHARE) if self.precision == "int8-checked" else s


# In order of preference where two are within MARGIN of each other: bf16 weights kept every language of the
# guard within 1.5 points; int8-checked's worst language sat at -1.96, at the bound.
RECIPES = (
    Recipe("fp32", torch.float32, "fp32", "fp32", None),
    Recipe("bf16-weights", torch.bfloat16, "fp32", "bf16",
           "passed over 205 languages on an AMX Sapphire Rapids (mean -0.01 points, worst -1.47) and an AVX-512 "
           "BF16 Zen 4 (mean +0.02, worst -1.47; benchmarks/README.md)",
           not_for_training="the quickstart's prompt trained over bf16 weights missed the guard against fp32 "
                            "training (mean -0.20 points, tzm_Tfng -3.92; benchmarks/README.md): pass --dtype bf16 "
                            "to train in bf16 anyway (1.4-2.2x faster steps)"),
    Recipe("int8-checked", torch.float32, "int8-checked", "int8",
           "passed over 205 languages on an AVX-512 VNNI Zen 4 (mean +0.02 points, worst -1.96)"),
)


def fastest(measured: dict, excluded=lambda recipe: None) -> tuple[Recipe, list[str]]:
    """The fastest recipe on the measured CPU, by the margin rule, among those `excluded(recipe)` gives no
    reason to leave out; and a note per recipe (its estimate, or why it was skipped or left out)."""
    identity, speedup = measured["identity"], measured["speedup"]
    chosen, best, notes = RECIPES[0], 1.0, []
    for candidate in RECIPES[1:]:
        blocked = candidate.blocker(identity)
        estimate = None if blocked else candidate.estimate(speedup)
        if estimate is None:
            notes.append(f"{candidate.name} skipped: {blocked or 'not measured'}")
            continue
        left_out = excluded(candidate)
        notes.append(f"{candidate.name} {estimate:.2f}x" + (f", {left_out}" if left_out else ""))
        if not left_out and estimate >= MARGIN * best:
            chosen, best = candidate, estimate
    return chosen, notes


def cpu_choice(shape: machine.LayerShape | None = None, measured: dict | None = None) -> tuple[Recipe, str, dict]:
    """(recipe, why, measurement) for a frozen backbone on this CPU."""
    measured = measured or machine.machine_speeds(shape or machine.DEFAULT_SHAPE)
    identity = measured["identity"]
    chosen, notes = fastest(measured)
    where = f"{measured['kind']} CPU ({identity['model']}, {identity['cores']} cores)"
    measured_how = "measured now" if measured.get("source") == "measured" else "measured earlier, cached"
    why = (f"auto: {chosen.name} on this {where}: one layer at the backbone's shape vs fp32 ({measured_how}): "
           f"{', '.join(notes)}; a recipe needs {MARGIN}x over the one before it"
           + (f"; guard {chosen.guard}" if chosen.guard else ""))
    return chosen, why, measured


@dataclass(frozen=True)
class ExecutionPlan:
    """How a run executes. `precision` is the arithmetic over the backbone's weights beyond their dtype:
    fp32 = none (bf16 weights then compute in bf16), int8 / int8-checked (CPU), bf16 / fp16 (autocast)."""

    device: torch.device
    dtype: torch.dtype
    precision: str = "fp32"
    engine: str = "torch"
    threads: int | str | None = None
    max_tokens: int | None = CPU_MAX_TOKENS
    batch_size: int | None = None
    trains_backbone: bool = False
    reasons: tuple[tuple[str, str], ...] = ()
    measured: dict | None = field(default=None, compare=False, repr=False)

    def why(self, setting: str) -> str:
        return dict(self.reasons).get(setting, "requested")

    def replace(self, why: dict | None = None, **changes) -> "ExecutionPlan":
        """A copy with `changes`, each with its reason in `why` (setting -> reason)."""
        reasons = dict(self.reasons)
        reasons.update(why or {})
        return dataclasses.replace(self, **changes, reasons=tuple(reasons.items()))

    def to_dict(self) -> dict:
        out = {"device": str(self.device), "dtype": dtype_name(self.dtype), "precision": self.precision,
               "engine": self.engine, "threads": self.threads, "max_tokens": self.max_tokens,
               "batch_size": self.batch_size, "why": dict(self.reasons)}
        if self.measured:
            out["machine"] = {"identity": self.measured["identity"], "kind": self.measured["kind"],
                              "speedup": {k: round(v, 3) for k, v in self.measured["speedup"].items() if v},
                              "source": self.measured.get("source")}
        return out

    def describe(self) -> str:
        """One line per setting with its reason, for `xlprompt plan` and logs."""
        lines = [f"device     {self.device}  ({self.why('device')})",
                 f"dtype      {dtype_name(self.dtype)} backbone weights  ({self.why('dtype')})",
                 f"precision  {self.precision}  ({self.why('precision')})",
                 f"engine     {self.engine}  ({self.why('engine')})",
                 f"threads    {self.threads if self.threads is not None else 'torch default'}  ({self.why('threads')})",
                 f"max tokens {self.max_tokens if self.max_tokens else 'no budget'}  ({self.why('max_tokens')})"]
        return "\n".join(lines)

    def for_rows(self, head: str, rows: int) -> "ExecutionPlan":
        """The plan for `rows` rows of a task with this `head`: int8-checked recalibrates per model and
        rechecks sentence classification only, so below MIN_ROWS rows or for tagging/QA it is fp32."""
        from ..engine import engine_class
        from ..engine.checked import MIN_ROWS

        if self.precision != "int8-checked" or ("int8-checked" in engine_class(self.engine).precisions
                                                and head == "classification" and rows >= MIN_ROWS):
            return self
        return self.replace(precision="fp32", why={"precision": (
            f"{self.why('precision')}; fp32 instead: int8-checked rechecks sentence classification on the torch "
            f"engine, for at least {MIN_ROWS:,} rows ({rows:,} {head} rows on {self.engine} here)")})


def resolve(device="auto", dtype="auto", precision: str = "auto", engine: str = "auto", threads="auto",
            max_tokens="auto", batch_size: int | None = None, *, purpose: str = "evaluate",
            trains_backbone: bool = False, shape: machine.LayerShape | None = None, backbone=None,
            kind: str = "encoder") -> ExecutionPlan:
    """The plan for the requested settings. `purpose`: evaluate | train | serve | sweep (a sweep runs fp32
    on CPU unless asked, so its numbers do not depend on the machine); `trains_backbone`: the run trains
    the model's own weights (never quantized, never bf16 on CPU); `shape`: the backbone's layer shape for
    the measurement (default the offline default's); `backbone`: a loaded one (its kind and shape)."""
    from ..engine import auto_precision, resolve_engine
    from .inference import PRECISIONS

    if purpose not in PURPOSES:
        raise ValueError(f"unknown purpose {purpose!r}")
    if precision not in PRECISIONS:
        raise XlpromptError(f"Unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}.")
    if backbone is not None:
        kind = backbone.kind
        shape = shape or machine.LayerShape.of_config(backbone.model.config)
    why: dict[str, str] = {}
    explicit_device = device is not None and str(device).lower() != "auto"
    where = check_device(device)
    why["device"] = ("where the model is" if isinstance(device, torch.device) else "requested" if explicit_device
                     else f"auto: {where.type}")

    measured, choice, choice_why = None, None, None
    auto_dtype = dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto")
    if where.type == "cpu" and not trains_backbone and purpose != "sweep" and (auto_dtype or precision == "auto"):
        choice, choice_why, measured = cpu_choice(shape)

    # the frozen backbone's weights
    if dtype is None and backbone is not None:
        weights, why["dtype"] = backbone.dtype, "as loaded"
    elif not auto_dtype:
        weights = resolve_dtype(dtype, where)
        why["dtype"] = "requested"
    elif where.type != "cpu":
        weights = resolve_dtype("auto", where)
        why["dtype"] = f"auto: {dtype_name(weights)} on {where.type}"
    elif trains_backbone:
        weights, why["dtype"] = torch.float32, "auto: fp32 (a backbone that trains keeps fp32 weights on CPU)"
    elif purpose == "sweep":
        weights, why["dtype"] = torch.float32, "auto: fp32 (a sweep's numbers must not depend on the CPU)"
    elif precision != "auto":
        weights, why["dtype"] = torch.float32, f"auto: fp32 (--precision {precision} asked for)"
    elif purpose == "train":
        trained_recipe, why["dtype"] = _train_recipe(measured)
        weights = trained_recipe.dtype
    else:
        weights, why["dtype"] = choice.dtype, choice_why

    # the precision over them
    if precision != "auto":
        used = _check_precision(precision, where, trains_backbone, weights, measured)
        why["precision"] = "requested"
    elif where.type != "cpu":
        used, why["precision"] = "fp32", f"auto: fp32 on {where.type} (pass --precision bf16|fp16 to use autocast)"
    elif trains_backbone or purpose in ("sweep", "train"):
        used, why["precision"] = "fp32", f"auto: fp32 ({'a trained backbone' if trains_backbone else purpose})"
    elif weights != torch.float32:
        used, why["precision"] = "fp32", f"auto: none beyond the weights ({dtype_name(weights)})"
    elif choice.name == "fp32" or choice.precision == "int8-checked":
        used, why["precision"] = choice.precision, choice_why
    else:  # the fastest recipe needs other weights than these fp32 ones: the fastest left over fp32 weights
        over_fp32, _ = fastest(measured, lambda r: None if r.dtype == torch.float32 else "other weights")
        used = over_fp32.precision
        why["precision"] = (f"auto: {used} over fp32 weights ({why['dtype']}; {choice.name} would be faster here: "
                            "leave dtype auto)")

    engine_used, why["engine"] = resolve_engine(engine, _Kind(kind), where, used, trained_backbone=trains_backbone,
                                                weights=weights)
    if precision == "auto" and auto_precision(engine_used):
        used = auto_precision(engine_used)
        why["precision"] = f"auto: {used} on the {engine_used} engine"

    if where.type != "cpu":
        threads, why["threads"] = None, f"torch's default ({where.type}: the thread probe is for CPUs)"
    elif threads == "auto":
        why["threads"] = "auto: 1, the idle cores and all cores timed on real batches, re-checked (inference.py)"
    if max_tokens == "auto":
        max_tokens = CPU_MAX_TOKENS if where.type == "cpu" else GPU_MAX_TOKENS
        why["max_tokens"] = f"auto: {max_tokens:,} padded tokens per batch on {where.type}"
    return ExecutionPlan(where, weights, used, engine_used, threads, max_tokens, batch_size, trains_backbone,
                         tuple(why.items()), measured)


def check_device(device="auto", dtype=None) -> torch.device:
    """The device a request names, with its dtype checked there (errors say what to pass instead): for
    commands that must fail before they write anything, and for choices made before a plan (worker counts)."""
    where = local_rank_device(resolve_device(device))
    if dtype is not None and not (isinstance(dtype, str) and dtype.lower() == "auto"):
        resolve_dtype(dtype, where)
    return where


@dataclass(frozen=True)
class _Kind:  # what resolve_engine reads of a backbone before one is loaded
    kind: str

    @property
    def name(self) -> str:
        return f"this {self.kind}"


def _train_recipe(measured: dict) -> tuple[Recipe, str]:
    """Training a prompt on a frozen backbone: the fastest recipe whose training passed the guard (int8
    cannot train), by the same margin rule as evaluation; fp32 where none did."""
    def excluded(candidate: Recipe) -> str | None:
        if candidate.probe == "int8":
            return "int8 cannot train"
        return None if candidate.trains else f"not by default: {candidate.not_for_training}"

    chosen, notes = fastest(measured, excluded)
    return chosen, (f"auto: {chosen.name} for training on this {measured['kind']} CPU ({'; '.join(notes)}; "
                    "prompt and head keep fp32 master weights)")


def _check_precision(precision: str, where: torch.device, trains_backbone: bool, weights: torch.dtype,
                     measured: dict | None) -> str:
    """An explicit precision, refused where it cannot run, warned about only where it is slow here."""
    if precision in ("int8", "int8-checked"):
        if where.type != "cpu":
            raise XlpromptError("int8 dynamic quantization runs on CPU only: use --precision bf16 or fp16 on a GPU.")
        if trains_backbone:
            raise XlpromptError("This run trained the backbone; xlprompt never quantizes trained weights: use "
                                "--precision fp32.")
        from ..engine.torch_engine import quantization_available

        if not quantization_available():
            raise XlpromptError(f"torch {torch.__version__} has neither a CPU int8 matmul nor torch.ao dynamic "
                                "quantization: use --precision fp32.")
        if weights != torch.float32:
            raise XlpromptError(f"--precision {precision} quantizes fp32 weights: use --dtype fp32 with it.")
        warn_if_int8_slow(precision, measured, stacklevel=5)
    if precision in ("bf16", "fp16") and where.type == "cpu":
        speeds = measured or machine.machine_speeds()
        identity = speeds["identity"]
        if precision == "fp16" or not machine.native_bf16(identity) or speeds["speedup"].get("bf16", 0) < 1.0:
            warnings.warn(f"{precision} autocast on this CPU ({machine.cpu_kind(identity)}) is likely slower than "
                          "fp32: it has no native kernels for it here.", stacklevel=4)
    return precision


def slow_int8_reason(measured: dict | None = None) -> str | None:
    """Why int8 would be slower than fp32 on this CPU, or None where it is not."""
    from ..engine.int8_token import int8_matmul_available

    if not int8_matmul_available():
        return f"torch {torch.__version__} has no CPU int8 matmul"
    measured = measured or machine.machine_speeds()
    s = measured["speedup"].get("int8") or 0.0
    if s >= 1.0:
        return None
    return (f"this {measured['kind']} CPU's int8 layer measured {s:.2f}x fp32's speed (PyTorch has integer "
            "kernels for AVX-512 VNNI, AVX-VNNI and AMX CPUs only)")


def warn_if_int8_slow(precision: str, measured: dict | None = None, stacklevel: int = 2) -> None:
    """An int8 precision asked for by name still runs where int8 is slow, with this warning."""
    reason = slow_int8_reason(measured)
    if reason:
        warnings.warn(f"--precision {precision} will likely be slower than fp32 here: {reason}.",
                      stacklevel=stacklevel + 1)
