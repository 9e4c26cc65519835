"""Many trained prompts on one frozen backbone, mixed row by row in one forward pass.

A prompt run is small (a prompt, a head) while the model under it is large, so a service that holds
many runs should hold the model once and let one batch carry rows of different runs. Each row is laid
out by its own run's collator, so it reads exactly the tokens and positions that run alone would give
it; what differs between rows is only which prompt fills its slots (input prompts), which prefix keys and
values it sees (deep prompts; shorter prefixes are padded and masked out), and which head reads it.
"""
from __future__ import annotations

import copy
import inspect
import logging
import threading
from pathlib import Path

import numpy as np
import torch

from ..data.collate import Batch, pad_layouts
from ..engine import checked
from ..engine.int8_token import linear_swaps, swapped
from ..core.errors import XlpromptError
from ..models.backbone import Backbone, resolve_model_source
from .served import (DuplicateName, InUse, Prediction, ServedRun, check_max_padding, check_name,
                     check_serving_precision, read_servable_config, serving_plan, to_prediction)

log = logging.getLogger("xlprompt.serve")


def _model_identity(name: str) -> str:
    """What a model name loads: local folders by their real path, hub ids by id (aliases of the offline
    default resolve to the same folder)."""
    source, _ = resolve_model_source(name)
    path = Path(source)
    return str(path.resolve()) if path.is_dir() else source


class PromptBank:
    """One frozen backbone and any number of named runs on it; `classify` mixes them per row.

    Adding and removing runs is thread-safe; forward passes are serialised (one model, one worker).
    `precision`: auto (the execution plan's choice: int8-checked where it is the fastest guarded recipe for an
    fp32 backbone on this CPU, else fp32) | fp32 | int8-checked; under int8-checked each run is calibrated when
    added (`serving_plan`, `_calibrate`).
    """

    def __init__(self, backbone: Backbone, max_padding: float = 0.1, engine: str = "auto", precision: str = "auto",
                 plan=None):
        from ..engine import engine_class

        check_max_padding(max_padding)
        self.backbone = backbone.eval().requires_grad_(False)
        self.max_padding = max_padding
        # the bank owns its backbone: an ONNX engine replaces its forward for the bank's lifetime (fp32)
        device = next(backbone.parameters()).device
        self.plan = serving_plan(precision, backbone, device, engine, plan)
        self.engine, self.engine_why = self.plan.engine, self.plan.why("engine")
        self.precision, self.precision_why = self.plan.precision, self.plan.why("precision")
        # the backbone's int8 layers (engine/int8_token.py), quantized once: every calibration and int8 pass
        self._int8 = linear_swaps(self.backbone.body) if self.precision == "int8-checked" else None
        self.rows = {"int8": 0, "rechecked": 0, "fp32": 0}
        # an ONNX engine exports (or finds in its cache) before the first request, not during it
        engine_class(self.engine)("fp32").serve(self.backbone)
        self.forward_passes = 0
        self._runs: dict[str, ServedRun] = {}
        self._ensembles: dict[str, tuple[str, ...]] = {}  # name -> member prompt names (their probabilities averaged)
        self._lock = threading.Lock()          # guards the name -> run table
        self._forward_lock = threading.Lock()  # one forward pass at a time on the shared model
        # the backbone's own tokenizer (label words when a run loads, calibration) and, per max_length, the
        # copy that requests of runs with that length tokenize with (served.ServedRun.tokenizer)
        self._tokenizer_lock = threading.Lock()
        self._readers: dict[int, tuple[object, threading.Lock]] = {}
        self._identity = None
        # decoders number text positions after their prefix; rows with different prefix lengths need
        # explicit positions (BLOOM takes none: its ALiBi positions come from the mask, which is exact)
        params = inspect.signature(backbone.body.forward).parameters
        self._explicit_positions = backbone.kind == "decoder" and "position_ids" in params

    @classmethod
    def from_runs(cls, runs: dict[str, str | Path], model: str | None = None, max_padding: float = 0.1,
                  device=None, dtype=None, engine: str = "auto", precision: str = "auto") -> "PromptBank":
        """Load the model once (`model`, else the first run's) on `device` in `dtype` (device.py; default
        auto) and every run onto it."""
        from ..execution.device import configure
        from ..execution import resolve
        from ..models.backbone import layer_shape

        check_max_padding(max_padding)  # before the model loads
        serving = check_serving_precision(precision)
        if not runs and model is None:
            raise XlpromptError("Give at least one run folder, or the model to serve prompts added later.")
        if model is None:
            first = Path(next(iter(runs.values())))
            model = read_servable_config(first).model
        # int8-checked serves over fp32 weights: asked for by name, the plan keeps them fp32
        plan = resolve(device, dtype, serving, engine, threads=None, purpose="serve", shape=layer_shape(model))
        configure(plan.device)
        bank = cls(Backbone.load(model, dtype=plan.dtype, device=plan.device), max_padding, engine, serving, plan)
        for name, path in runs.items():
            bank.add(name, path)
        return bank

    # ------------------------------------------------------------------ the table of runs

    def names(self) -> list[str]:
        with self._lock:
            return list(self._runs)

    def get(self, name: str) -> ServedRun:
        with self._lock:
            entry = self._runs.get(name)
        if entry is None:
            known = ", ".join(self.names()) or "none loaded"
            raise KeyError(f"Unknown prompt {name!r}; known: {known}.")
        return entry

    def runs(self) -> list[ServedRun]:
        with self._lock:
            return list(self._runs.values())

    def add(self, name: str, run_dir: str | Path) -> ServedRun:
        """Load a run folder onto the shared backbone under `name`."""
        from ..runs.run import Run
        from ..tasks.custom import get_task_for

        check_name(name)
        if name in self.names():
            raise DuplicateName(f"A prompt named {name!r} is already loaded: remove it first or choose another name.")
        if name in self.ensembles():
            raise DuplicateName(f"{name!r} names an ensemble: choose another name.")
        run_dir = Path(run_dir).expanduser()
        config = read_servable_config(run_dir)
        self._check_model(config.model, run_dir)
        with self._tokenizer_lock:  # a decoder's label words are tokenized while it loads; calibration tokenizes
            try:
                run = Run.load(run_dir, backbone=self.backbone)
            except XlpromptError:
                raise
            except Exception as exc:  # unreadable tensors, shapes that do not fit this model
                raise XlpromptError(f"{run_dir} could not be loaded: {type(exc).__name__}: {exc}") from exc
            task = get_task_for(run.config)  # once here, not per request
            entry = ServedRun(name, run_dir.resolve(), run, tuple(task.label_names), task.pairs,
                              run.model.collator(), *self.reader(run.config.max_length))
            if self.precision == "int8-checked":
                entry.recheck_threshold = self._calibrate(entry, task)
        with self._lock:
            if name in self._runs:  # another thread added the same name while this one loaded
                raise DuplicateName(f"A prompt named {name!r} is already loaded.")
            self._runs[name] = entry
        return entry

    def reader(self, max_length: int) -> tuple[object, threading.Lock]:
        """The tokenizer copy (and its lock) that requests of runs with this max_length use; the caller
        holds `_tokenizer_lock`, since copying reads the backbone's tokenizer."""
        with self._lock:
            if max_length not in self._readers:
                self._readers[max_length] = (copy.deepcopy(self.backbone.tokenizer), threading.Lock())
            return self._readers[max_length]

    def _calibrate(self, entry: ServedRun, task) -> float | None:
        """The run's int8-checked threshold from its training language's dev set (a few seconds); None, with
        a log line, where that set cannot be read: the run's rows then run in fp32."""
        from ..evaluation.evaluate import predict_outputs

        try:
            with self._forward_lock:  # it runs the shared backbone, and swaps its layers while in int8
                calibration = checked.calibration(entry.run, task, predict_outputs, data_dir=entry.run.config.data_dir,
                                                  int8_layers=self._int8)
        except (XlpromptError, OSError, ValueError) as exc:
            log.warning("prompt %s runs in fp32: its int8 recheck threshold needs the training language's dev "
                        "set, which could not be read (%s)", entry.name, exc)
            return None
        log.info("prompt %s: int8, rows with a margin under %.3f rechecked in fp32", entry.name,
                 calibration["threshold"])
        return calibration["threshold"]

    def remove(self, name: str) -> ServedRun:
        """Forget a run; rows of it already in a batch still finish (they hold the run itself)."""
        with self._lock:
            if name not in self._runs:
                raise KeyError(f"Unknown prompt {name!r}.")
            used = [e for e, members in self._ensembles.items() if name in members]
            if used:
                raise InUse(f"Prompt {name!r} is a member of ensemble {', '.join(used)}: it stays while they do.")
            return self._runs.pop(name)

    def check_members(self, members: list[str], name: str = "an ensemble") -> list[ServedRun]:
        """The loaded runs of an ensemble's members: distinct, loaded, one task with one set of labels."""
        if len(set(members)) != len(members) or not members:
            raise XlpromptError(f"{name} needs distinct members, got {', '.join(members) or 'none'}.")
        missing = [m for m in members if m not in self.names()]
        if missing:
            raise XlpromptError(f"{name}: {', '.join(missing)} is not loaded.")
        runs = [self.get(m) for m in members]
        if len({(r.run.config.task, tuple(r.label_names), r.takes_pairs) for r in runs}) > 1:
            raise XlpromptError(f"Members of {name} must share a task and its labels; it mixes "
                                + "; ".join(f"{r.name}: {r.run.config.task} ({', '.join(r.label_names)})"
                                            for r in runs) + ".")
        return runs

    def add_ensemble(self, name: str, members: list[str]) -> None:
        """A name for loaded prompts whose class probabilities are averaged (serving/ensemble.py)."""
        check_name(name)
        self.check_members(members, f"ensemble {name!r}")
        with self._lock:
            if name in self._runs or name in self._ensembles:
                raise DuplicateName(f"A prompt or ensemble named {name!r} is already loaded.")
            self._ensembles[name] = tuple(members)

    def ensembles(self) -> dict[str, tuple[str, ...]]:
        with self._lock:
            return dict(self._ensembles)

    def resolve(self, name: str) -> list[ServedRun]:
        """The runs a name stands for: one prompt, or an ensemble's members."""
        with self._lock:
            members = self._ensembles.get(name)
        return [self.get(m) for m in members] if members is not None else [self.get(name)]

    def _check_model(self, model: str, run_dir: Path) -> None:
        if model == self.backbone.name:
            return
        try:
            if self._identity is None:
                self._identity = _model_identity(self.backbone.name)
            same = _model_identity(model) == self._identity
        except XlpromptError as exc:
            raise XlpromptError(f"{run_dir} was trained on {model!r}, which cannot be checked against the "
                                f"served model {self.backbone.name!r}: {exc}") from exc
        if not same:
            raise XlpromptError(f"{run_dir} was trained on {model!r}, but this server's model is "
                                f"{self.backbone.name!r}: all prompts must share one model.")

    # ------------------------------------------------------------------ inference

    def classify(self, prompt_names: list[str], texts: list[str],
                 text_pairs: list[str] | None = None) -> list[Prediction]:
        """Row i of `texts` classified with prompt `prompt_names[i]`, all in one forward pass."""
        if len(prompt_names) != len(texts) or (text_pairs is not None and len(text_pairs) != len(texts)):
            raise XlpromptError("classify needs one prompt name (and one text pair, if any) per text.")
        try:
            entries = [self.get(n) for n in prompt_names]
        except KeyError as exc:
            raise XlpromptError(exc.args[0]) from None
        ids: list = [None] * len(texts)
        for entry in dict.fromkeys(entries):  # tokenize each run's rows with that run's max_length
            rows = [i for i, e in enumerate(entries) if e is entry]
            pairs = [text_pairs[i] for i in rows] if text_pairs is not None else None
            for i, row_ids in zip(rows, entry.encode([texts[i] for i in rows], pairs)):
                ids[i] = row_ids
        return [to_prediction(entry, row) for entry, row in zip(entries, self.forward(entries, ids))]

    @torch.inference_mode()
    def forward(self, entries: list[ServedRun], token_ids: list[list[int]]) -> list[np.ndarray]:
        """Class logits per row (each row's own label count) for rows of any runs of this bank, in row order.

        Rows are sorted by length and run in as few passes as keep padding within `max_padding`: on a CPU
        a padded position costs as much as a real one, so one wide pass over texts of mixed lengths is
        slower than a few narrow ones (a GPU, with `max_padding=1`, runs everything in one pass)."""
        if not entries:
            return []
        lengths = [len(ids) + e.model.num_slots for e, ids in zip(entries, token_ids)]
        out: list = [None] * len(entries)
        with self._forward_lock:
            for rows in pack_rows(lengths, self.max_padding):
                logits = self._checked_forward([entries[r] for r in rows], [token_ids[r] for r in rows])
                for r, row in zip(rows, logits):
                    out[r] = row
                self.forward_passes += 1
        return out

    def _checked_forward(self, entries: list[ServedRun], token_ids: list[list[int]]) -> list[np.ndarray]:
        """fp32; or, under int8-checked, the rows of calibrated runs in int8 first, then in fp32 those whose
        int8 margin (top-1 minus top-2 logit) is below their run's threshold, with the other runs' rows."""
        if self.precision != "int8-checked":
            self.rows["fp32"] += len(entries)
            return self._forward(entries, token_ids)
        out: list = [None] * len(entries)
        fast = [i for i, e in enumerate(entries) if e.recheck_threshold is not None]
        again = [i for i, e in enumerate(entries) if e.recheck_threshold is None]
        self.rows["fp32"] += len(again)
        if fast:
            with swapped(self._int8):
                logits = self._forward([entries[i] for i in fast], [token_ids[i] for i in fast])
            for i, row in zip(fast, logits):  # rows of different runs have different label counts: one by one
                if checked.margins([row])[0] < entries[i].recheck_threshold:
                    again.append(i)
                    self.rows["rechecked"] += 1
                else:
                    out[i] = row
            self.rows["int8"] += len(fast)
        if again:
            again.sort()
            for i, row in zip(again, self._forward([entries[i] for i in again], [token_ids[i] for i in again])):
                out[i] = row
        return out

    def _forward(self, entries: list[ServedRun], token_ids: list[list[int]]) -> list[np.ndarray]:
        backbone = self.backbone
        laid = [e.collator.layout(ids) for e, ids in zip(entries, token_ids)]
        laid_out = pad_layouts(laid, entries[0].collator.pad_id)
        dev = backbone.device
        input_ids, attention, slots, label_positions = (t.to(dev) for t in laid_out)
        n, width = input_ids.shape
        groups: dict[ServedRun, list[int]] = {}
        for r, e in enumerate(entries):
            groups.setdefault(e, []).append(r)

        embeds = backbone.embed(input_ids)
        if bool(slots.any()):
            # boolean assignment fills slots in row-major order, so stacking each row's prompt in row order
            # puts every row's own prompt into its own slots
            prompts = [e.model.method.prompt_embeddings() for e in entries if e.enters == "input"]
            embeds = embeds.clone()
            embeds[slots] = torch.cat(prompts).to(embeds.dtype)

        prefix_lengths = torch.tensor([e.prefix_length for e in entries], device=dev)
        longest = int(prefix_lengths.max())
        past, full_mask = None, attention
        if longest:
            past = self._mixed_prefix(groups, n, longest, embeds.dtype)
            # a row sees its own prefix length of keys; the padding after it and whole prefixes of rows
            # without one are masked out, which leaves their attention exactly as without those keys
            prefix_mask = (torch.arange(longest, device=dev).unsqueeze(0) < prefix_lengths.unsqueeze(1)).long()
            full_mask = torch.cat([prefix_mask, attention], dim=1)
        position_ids = None
        if self._explicit_positions:
            position_ids = prefix_lengths.unsqueeze(1) + torch.arange(width, device=dev).unsqueeze(0)
        hidden = backbone(embeds, full_mask, past_key_values=past, position_ids=position_ids)

        out: list = [None] * n
        for entry, rows in groups.items():
            index = torch.tensor(rows, device=dev)
            empty = torch.zeros((len(rows), 0), dtype=torch.long, device=dev)
            batch = Batch(input_ids[index], attention[index], slots[index], label_positions[index], empty,
                          empty.bool(), torch.zeros(len(rows), dtype=torch.long, device=dev), index)
            # heads keep fp32 weights: a bf16/fp16 backbone's hidden states are read in fp32
            logits = entry.model.head(hidden[index].float(), batch)[:, :entry.model.num_labels].float().cpu().numpy()
            for r, row in zip(rows, logits):
                out[r] = row
        return out

    def _mixed_prefix(self, groups, n: int, longest: int, dtype) -> list:
        """Per-layer (K, V) of shape (rows, kv_heads, longest, head_dim): each deep-prompt row its run's
        prefix at the front, zeros elsewhere (masked, so their value never counts)."""
        deep = {e: rows for e, rows in groups.items() if e.prefix_length}
        sample = next(iter(deep)).model.method.prefix_tensor()
        layers, _, kv_heads, _, head_dim = sample.shape
        keys = torch.zeros((layers, 2, n, kv_heads, longest, head_dim), dtype=dtype, device=self.backbone.device)
        for entry, rows in deep.items():
            prefix = entry.model.method.prefix_tensor().to(dtype)  # (layers, 2, kv_heads, L, head_dim)
            keys[:, :, rows, :, :prefix.shape[3]] = prefix.unsqueeze(2)
        return [(keys[i, 0], keys[i, 1]) for i in range(layers)]


def pack_rows(lengths: list[int], max_padding: float) -> list[list[int]]:
    """Row groups, shortest rows first, each padded to its longest row with at most `max_padding` of its
    positions being padding (a row alone always makes a group)."""
    groups, current, real = [], [], 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        width = lengths[i]  # ascending: the newest row is the widest
        if current and 1 - (real + width) / (width * (len(current) + 1)) > max_padding:
            groups.append(current)
            current, real = [], 0
        current.append(i)
        real += width
    return groups + [current] if current else groups


