"""PEFT adapter folders <-> xlprompt run folders.

Exact correspondences (checked against peft's `PeftModel.get_prompt`):
- input prompt `embedding` (L, d)  <->  PromptTuningConfig, `prompt_embeddings` (L, d);
- deep prompt `prefix` (layers, 2, kv_heads, L, head_dim)  <->  PrefixTuningConfig, `prompt_embeddings`
  (L, layers*2*kv_heads*head_dim): PEFT views it as (B, L, layers*2, heads, head_dim) and permutes it to
  (layers*2, B, heads, L, head_dim), so [K, V] of layer i are rows 2i, 2i+1 of that middle axis.
  Grouped-query models store K/V heads only; PEFT does the same (token_dim = kv_heads * head_dim).
Everything PEFT has no field for (task, labels, label words, head pooling, layout) goes into `xlprompt.json`
and README.md beside the adapter; the encoder's linear head is copied as `head.safetensors`.
Neither direction imports peft (adapters are JSON + safetensors), and nothing here reads pickle.
Import (PEFT adapter -> run folder) is in `peft_import.py`.
"""
from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..core import io
from ..runs.config import TrainConfig
from ..core.errors import XlpromptError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SIDECAR = "xlprompt.json"
HEAD = "head.safetensors"


@dataclass
class ExportReport:
    out_dir: Path
    peft_type: str
    task_type: str
    base_model: str
    predictions_match: bool  # PEFT (plus the head/label words beside it) gives xlprompt's logits
    exported: list[str] = field(default_factory=list)
    not_represented: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"PEFT {self.peft_type} adapter ({self.task_type}) for {self.base_model} in {self.out_dir}"]
        lines += [f"  exported: {x}" for x in self.exported]
        lines += [f"  not in the adapter: {x}" for x in self.not_represented]
        lines.append("  predictions through PEFT match xlprompt's" if self.predictions_match else
                     "  WARNING: predictions through PEFT will differ from xlprompt's (see above)")
        return "\n".join(lines)


def _atomic_dir(out: Path, build, overwrite: bool):
    """Build a folder in a hidden temporary sibling, then rename it into place: `out` is whole or absent."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise XlpromptError(f"{out} already exists: choose another --out or pass --overwrite.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        result = build(tmp)
        old = None
        if out.exists():  # --overwrite: move the old folder aside first, delete it once the new one is in
            old = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return result
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _model_facts(model: str):
    """(base_model_name_or_path for PEFT, HF config or None, tokenizer or None). Never fails: export only
    needs them for optional fields (PEFT fills missing geometry from the base model when it loads)."""
    from ..models.backbone import ORIGINAL_E5, resolve_model_source
    from ..models.offline_default import OFFLINE_DEFAULT_NAME

    path = Path(model).expanduser()
    base = str(path.resolve()) if path.is_dir() else (ORIGINAL_E5 if model == OFFLINE_DEFAULT_NAME else model)
    try:
        from transformers import AutoConfig, AutoTokenizer

        source, local_only = resolve_model_source(model)
        return (base, AutoConfig.from_pretrained(source, local_files_only=local_only),
                AutoTokenizer.from_pretrained(source, local_files_only=local_only))
    except (XlpromptError, OSError, ValueError):
        return base, None, None


def _refuse_unexportable(run_dir: Path, config: TrainConfig) -> None:
    if config.method.peft_type is None:
        raise XlpromptError(
            f"{run_dir} was trained with --method {config.method.type} and has no prompt, so there is no PEFT "
            "prompt adapter to export. Use the run with xlprompt (xlprompt.load / xlprompt evaluate), or train "
            "a prompt (--method prompt or deep) to get an exportable run.")
    if not config.freeze_model or (run_dir / "backbone.safetensors").exists():
        raise XlpromptError(
            f"{run_dir} trained the model's weights too (--no-freeze): a PEFT prompt adapter is applied to the "
            "original frozen model, so it would not reproduce this run. Retrain with --freeze (the default) to "
            "export, or keep using this run with xlprompt.")


def _prompt_tensor(method, state: dict, kind: str, hf_config):
    """(PEFT config fields, the `prompt_embeddings` tensor, what was exported, notes, predictions match)."""
    if method.peft_type == "PROMPT_TUNING":
        if set(state) != {"embedding"}:
            raise XlpromptError(f"prompt.safetensors holds {sorted(state)}, not a final prompt; fold the "
                                "reparameterization first: xlprompt.load(RUN).save(RUN).")
        prompt = state["embedding"].float()
        length, dim = prompt.shape
        text_cfg = hf_config.get_text_config() if hf_config is not None else None
        fields = dict(peft_type="PROMPT_TUNING", num_virtual_tokens=length, token_dim=dim,
                      num_layers=getattr(text_cfg, "num_hidden_layers", None),
                      num_attention_heads=getattr(text_cfg, "num_attention_heads", None),
                      prompt_tuning_init="RANDOM", prompt_tuning_init_text=None, tokenizer_name_or_path=None,
                      tokenizer_kwargs=None)
        exported = [f"input soft prompt, {length} virtual tokens x {dim} (prompt_embeddings)"]
        if method.reparam != "none":
            exported.append(f"the {method.reparam} reparameterization, folded into the prompt (no network)")
        if method.position == "start":
            return fields, prompt, exported, [], True
        where = ("after the text (`text P </s>`, label read at the last prompt slot)" if kind == "decoder"
                 else "between <s> and the text (`<s> P text </s>`)")
        return fields, prompt, exported, [
            f"layout: this prompt was trained {where}; PEFT prepends it before every token, so predictions "
            "through PEFT will differ. Train with InputPromptConfig(position='start') (PEFT's layout) for an "
            "adapter that reproduces xlprompt's predictions."], False
    prefix = state["prefix"].float()  # (layers, 2, kv_heads, L, head_dim)
    layers, _, kv_heads, length, head_dim = prefix.shape
    fields = dict(peft_type="PREFIX_TUNING", num_virtual_tokens=length, token_dim=kv_heads * head_dim,
                  num_layers=layers, num_attention_heads=kv_heads, encoder_hidden_size=kv_heads * head_dim,
                  prefix_projection=False, init_weights=None)
    exported = [f"deep prompt: prefix keys/values of length {length} in {layers} layers ({kv_heads} K/V heads "
                f"x {head_dim}), prefix_projection=False"]
    if method.prefix_projection:
        exported.append("the prefix projection, folded into the prefix (PEFT's inference mode needs no MLP)")
    flat = prefix.permute(3, 0, 1, 2, 4).reshape(length, -1)  # PEFT's (L, layers*2*kv_heads*head_dim)
    if kind == "decoder":
        return fields, flat, exported, [], True
    return fields, flat, exported, [
        "positions: xlprompt keeps the text's position ids beside a prefix; PEFT lets the encoder start them "
        "after the prefix (BERT/XLM-R count the cache), so predictions through PEFT will differ."], False


def export_peft(run_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> ExportReport:
    """Write a folder that `peft.PeftModel.from_pretrained(base_model, out_dir)` loads, with README.md and
    xlprompt.json saying what the adapter cannot hold; refuse runs without a prompt or with a trained model."""
    from ..models.backbone import ORIGINAL_E5
    from ..tasks import get_task

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if not (run_dir / "run.json").exists():
        raise XlpromptError(f"{run_dir} is not a complete xlprompt run folder (no run.json); export a folder "
                            "written by `xlprompt train --out DIR`.")
    config = TrainConfig.from_dict(io.read_json(run_dir / "config.json"))
    kind = io.read_json(run_dir / "run.json")["model_kind"]
    _refuse_unexportable(run_dir, config)
    base, hf_config, tokenizer = _model_facts(config.model)
    task, method = get_task(config.task), config.method
    fields, prompt, exported, notes, match = _prompt_tensor(method, io.load_tensors(run_dir / "prompt.safetensors"),
                                                            kind, hf_config)
    peft = {"base_model_name_or_path": base, "revision": None, "inference_mode": True,
            "task_type": "CAUSAL_LM" if kind == "decoder" else "FEATURE_EXTRACTION",
            "num_transformer_submodules": 1, "modules_to_save": None, "auto_mapping": None, **fields}
    sidecar = {"format": "xlprompt-peft/1", "source_run": str(run_dir.resolve()), "task": config.task,
               "label_names": list(task.label_names), "model": config.model, "model_kind": kind,
               "method": method.type, "prompt_position": getattr(method, "position", None),
               "max_length": config.max_length}
    head_src = run_dir / HEAD
    copy_head = kind == "encoder" and head_src.exists()
    if kind == "decoder":
        model_type = getattr(hf_config, "model_type", None)
        words = config.label_words or task.label_words.get(model_type) or task.label_words.get("xglm")
        ids = None
        if tokenizer is not None and words:
            from ..models.heads import verbalizer_token_ids

            ids = verbalizer_token_ids(tokenizer, list(words))
        sidecar.update(label_words=list(words or []), label_token_ids=ids, loss_over=config.loss_over)
        notes.append(f"verbalizer: label words {words} (token ids {ids}) are not part of a PEFT adapter "
                     f"(kept in {SIDECAR}); predict with the LM logits at the last text token over those ids.")
    elif copy_head:
        sidecar.update(pooling=config.pooling)
        where = "all attended positions, virtual tokens included" if fields["peft_type"] == "PROMPT_TUNING" \
            else "the text positions"
        pooled = {"mean": f"the mean of last_hidden_state over {where}",
                  "first": "last_hidden_state at position 0"}.get(config.pooling, config.pooling)
        notes.append(f"head: the trained linear head cannot live in a PEFT prompt adapter; it is saved as {HEAD} "
                     f"beside the adapter ({task.num_labels} labels: {', '.join(task.label_names)}); apply it "
                     f"to {pooled}.")
    if base == ORIGINAL_E5:
        notes.append("base model: trained on xlprompt's offline copy of multilingual-e5-small (dequantized 4-bit, "
                     "in ~/.cache/xlprompt/models) unless the original was cached; PEFT loads the hub original, "
                     "whose outputs differ slightly.")
    sidecar.update(predictions_match=match, notes=notes)
    files = [ADAPTER_CONFIG, ADAPTER_WEIGHTS] + ([HEAD] if copy_head else []) + [SIDECAR, "README.md"]
    exported.append(f"files: {', '.join(files)}")
    report = ExportReport(out_dir, peft["peft_type"], peft["task_type"], base, match, exported, notes)

    def build(tmp: Path) -> ExportReport:
        io.write_json(tmp / ADAPTER_CONFIG, peft)
        io.save_tensors(tmp / ADAPTER_WEIGHTS, {"prompt_embeddings": prompt}, metadata={"format": "pt"})
        if copy_head:
            shutil.copyfile(head_src, tmp / HEAD)
        io.write_json(tmp / SIDECAR, sidecar)
        io.write_text(tmp / "README.md", _readme(report, peft))
        return report

    return _atomic_dir(out_dir, build, overwrite)


def _readme(report: ExportReport, peft: dict) -> str:
    auto = "AutoModelForCausalLM" if peft["task_type"] == "CAUSAL_LM" else "AutoModel"
    lines = ["# xlprompt soft prompt as a PEFT adapter", "",
             f"Exported by xlprompt from `{report.base_model}`; `{peft['peft_type']}`, task type "
             f"`{peft['task_type']}`.", "", "```python", "from peft import PeftModel",
             f"from transformers import {auto}", "",
             f"model = PeftModel.from_pretrained({auto}.from_pretrained(\"{report.base_model}\"), \"{report.out_dir}\")",
             "model.eval()", "```", "", "## Exported", ""]
    lines += [f"- {x}" for x in report.exported]
    lines += ["", "## What PEFT cannot represent", ""]
    lines += [f"- {x}" for x in report.not_represented] or ["- nothing: PEFT reproduces xlprompt's predictions"]
    lines += ["", "Predictions through PEFT " + ("match xlprompt's." if report.predictions_match
                                                 else "**will differ** from xlprompt's."), ""]
    return "\n".join(lines)
