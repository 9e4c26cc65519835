"""Import a PEFT prompt-tuning / prefix-tuning adapter folder as an xlprompt run folder (see peft.py for
the tensor layouts). Reads `adapter_model.safetensors` only: `.bin` adapters are pickle and are refused."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core import io
from ..runs.config import TrainConfig
from ..core.errors import XlpromptError
from ..prompts.config import METHOD_CONFIGS, method_settings
from .peft import ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD, SIDECAR, _atomic_dir


@dataclass
class ImportReport:
    out_dir: Path
    peft_type: str
    method: str
    model: str
    notes: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "\n".join([f"imported PEFT {self.peft_type} adapter as a {self.method} run of {self.model} "
                          f"into {self.out_dir}"] + [f"  {n}" for n in self.notes])


def _head_file(head: str | Path | None, adapter_dir: Path) -> Path | None:
    if head is None:
        return adapter_dir / HEAD if (adapter_dir / HEAD).exists() else None
    path = Path(head)
    path = path / HEAD if path.is_dir() else path
    if not path.exists():
        raise XlpromptError(f"--head {head}: {path} does not exist; give a run folder or a head.safetensors file.")
    return path


def import_peft(adapter_dir: str | Path, out_run_dir: str | Path, task: str | None = None,
                model: str | None = None, head: str | Path | None = None, label_words: list[str] | None = None,
                pooling: str | None = None, overwrite: bool = False) -> ImportReport:
    """Turn a PEFT prompt-tuning or prefix-tuning adapter folder into an xlprompt run folder.

    Encoders need a trained classification head, which a PEFT prompt adapter does not hold: it is taken from
    `head` (a run folder or a head.safetensors) or from a `head.safetensors` beside the adapter (what
    `export_peft` writes), and the import is refused without one rather than writing a run with an
    untrained head. Decoders use label words (no weights). Task, label words and pooling default to the
    adapter's `xlprompt.json` when xlprompt exported it, else to the task's defaults.
    """
    from ..models.classifier import build_classifier
    from ..runs.run import Run
    from ..tasks import get_task

    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / ADAPTER_CONFIG).exists():
        raise XlpromptError(f"{adapter_dir} has no {ADAPTER_CONFIG}: point at a folder written by PEFT's "
                            "save_pretrained or by `xlprompt export --format peft`.")
    cfg = io.read_json(adapter_dir / ADAPTER_CONFIG)
    kind = cfg.get("peft_type")
    if kind not in ("PROMPT_TUNING", "PREFIX_TUNING"):
        raise XlpromptError(f"{adapter_dir} is a {kind} adapter; xlprompt imports PROMPT_TUNING (input prompt) "
                            "and PREFIX_TUNING (deep prompt) adapters only.")
    if (cfg.get("num_transformer_submodules") or 1) != 1 or cfg.get("task_type") == "SEQ_2_SEQ_LM":
        raise XlpromptError(f"{adapter_dir} is for an encoder-decoder model; xlprompt supports encoders and "
                            "decoders only.")
    if not (adapter_dir / ADAPTER_WEIGHTS).exists():
        pickled = [p.name for p in adapter_dir.glob("*.bin")]
        raise XlpromptError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}" + (
            f" (only {', '.join(pickled)}: pickle, which xlprompt never loads; re-save the adapter with PEFT's "
            "save_pretrained(safe_serialization=True) where you trust the file)" if pickled else "") + ".")
    tensors = io.load_tensors(adapter_dir / ADAPTER_WEIGHTS)
    if "prompt_embeddings" not in tensors:
        raise XlpromptError(f"{adapter_dir}/{ADAPTER_WEIGHTS} has no prompt_embeddings tensor "
                            f"(it holds {sorted(tensors)[:5]}).")
    side = io.read_json(adapter_dir / SIDECAR) if (adapter_dir / SIDECAR).exists() else {}
    task_name = task or side.get("task") or "sib200"
    model_name = model or cfg.get("base_model_name_or_path")
    if not model_name:
        raise XlpromptError(f"{adapter_dir} names no base model: pass --model.")
    pe = tensors["prompt_embeddings"].float()
    length = pe.shape[0]
    # PEFT's layout is position="start"; an adapter xlprompt exported keeps the layout it was trained in
    position = side.get("prompt_position") or "start"
    cls = next(c for c in METHOD_CONFIGS.values() if c.peft_type == kind)  # the method that maps to it
    options = {"prompt_length": length, "position": position}
    method = cls(**{k: v for k, v in options.items() if k in method_settings(cls.type)})
    label_words = label_words or side.get("label_words") or None
    config = TrainConfig(task=task_name, model=model_name, method=method,
                         pooling=pooling or side.get("pooling") or "mean", label_words=label_words,
                         max_length=side.get("max_length", 128))
    built = build_classifier(config, get_task(task_name), device="cpu", dtype="fp32")  # a conversion: CPU suffices
    notes = []
    extra = sorted(set(tensors) - {"prompt_embeddings"})
    if extra:
        notes.append(f"ignored adapter tensors {extra} (PEFT modules_to_save); only the prompt is imported")
    if kind == "PROMPT_TUNING":
        if tuple(pe.shape) != (length, built.backbone.hidden_size):
            raise XlpromptError(f"prompt_embeddings is {tuple(pe.shape)} but {model_name} has hidden size "
                                f"{built.backbone.hidden_size}: pass the adapter's base model with --model.")
        built.method.load_state_dict({"embedding": pe})
        notes.append("input prompt with position='start' (PEFT's layout: virtual tokens before every token)"
                     if position == "start" else f"input prompt with position={position!r} from {SIDECAR} "
                     "(the layout it was trained in, not PEFT's)")
    else:
        shape = built.method.shape  # (layers, 2, kv_heads, L, head_dim)
        if pe.numel() != length * shape[0] * shape[1] * shape[2] * shape[4]:
            raise XlpromptError(f"prompt_embeddings is {tuple(pe.shape)}, but a prefix for {model_name} needs "
                                f"({length}, {shape[0] * 2 * shape[2] * shape[4]}): pass the base model with --model.")
        built.method.load_state_dict({"prefix": pe.view(length, shape[0], 2, shape[2], shape[4])
                                      .permute(1, 2, 3, 0, 4).contiguous()})
        if built.backbone.kind == "encoder":
            notes.append("encoder prefix: xlprompt keeps text position ids, PEFT starts them after the prefix, "
                         "so predictions can differ from PEFT's")
    head_path = _head_file(head, adapter_dir)
    if built.backbone.kind == "encoder":
        if head_path is None:
            raise XlpromptError(
                "A PEFT prompt adapter holds no classification head, and an encoder run needs a trained one: "
                "pass --head RUN_DIR_OR_FILE (a head.safetensors trained with this prompt, e.g. the one "
                "`xlprompt export` writes beside the adapter).")
        try:
            built.head.load_state_dict(io.load_tensors(head_path))
        except RuntimeError as exc:
            raise XlpromptError(f"{head_path} does not fit this task's head ({get_task(task_name).num_labels} "
                                f"labels, hidden {built.backbone.hidden_size}): {exc}") from exc
        notes.append(f"head from {head_path} (pooling {config.pooling})")
    else:
        if head is not None:
            notes.append(f"ignored --head {head}: a decoder scores label words with its LM head")
        notes.append(f"decoder verbalizer head (no weights), label words {config.label_words or 'of the task'}")
    built.eval()
    run = Run(config=config, model=built, curve=[],
              info={"imported_from": str(adapter_dir.resolve()), "peft_type": kind, "best_epoch": None})
    _atomic_dir(Path(out_run_dir), run.save, overwrite)
    return ImportReport(Path(out_run_dir), kind, method.type, model_name, notes)
