"""A trained run and its folder: prompt/head as safetensors, config/curve/metadata as JSON.

Files are written atomically and `run.json` last, so a folder with `run.json` is complete.
"""
from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..core import io
from .config import TrainConfig
from ..core.errors import WriteFailed, XlpromptError
from .state import FILES, load_trainable_state



# what `xlprompt train --evaluate` and `xlprompt evaluate` write into a run folder by default: they describe
# the run that was there, so saving another run over the folder removes them
RESULT_FILES = ("results.json", "results.csv")


def parameter_counts(model) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    backbone = model.backbone.num_parameters()
    return {"trainable": trainable, "total": total, "backbone": backbone,
            "trainable_share_of_backbone": trainable / backbone}


def materialize_method(model) -> bool:
    """Fold the prompt method's reparameterization into its final tensors, if it has any (any method
    with a `materialize()`: input and deep prompts). Run folders then hold no reparam network."""
    materialize = getattr(model.method, "materialize", None)
    if materialize is None:
        return False
    materialize()
    return True


@dataclass
class Run:
    config: TrainConfig
    model: object
    curve: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    path: Path | None = None

    def evaluate(self, languages="all", **kwargs) -> dict:
        from ..evaluation.evaluate import evaluate

        return evaluate(self, languages, **kwargs)

    def predict(self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 64,
                engine: str = "auto", precision: str = "auto", plan=None) -> list[str]:
        """The predicted label name of each text (as `xlprompt serve` answers "label"). `precision` auto is
        what the execution plan picks for the loaded model (execution/plan.py; int8-checked only from 2,000
        texts of sentence classification), as in `evaluate`; or give a resolved `plan`."""
        from ..evaluation.evaluate import predict

        names = self.model_label_names()
        return [names[i] for i in predict(self.model, texts, self.config.max_length, text_pairs, batch_size,
                                          engine=engine, precision=precision, run=self, plan=plan)]

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "run.json").unlink(missing_ok=True)  # the folder is incomplete until run.json is back
        except OSError as exc:  # a read-only folder: the run there stays as it was
            raise WriteFailed(out / "run.json", exc) from exc
        materialized = materialize_method(self.model)  # logits unchanged; the saved prompt is final
        state = self.model.trainable_state()
        written = set()
        for part, tensors in state.items():
            if tensors:
                io.save_tensors(out / FILES[part], tensors)
                written.add(FILES[part])
        if not self.config.freeze_model:
            io.save_tensors(out / FILES["backbone"], self.model.backbone.model.state_dict())
            written.add(FILES["backbone"])
        # another run's part (a fine-tuned backbone) never stays, nor its evaluation written beside it
        for stale in (set(FILES.values()) - written) | set(RESULT_FILES):
            try:
                (out / stale).unlink(missing_ok=True)
            except OSError as exc:
                raise WriteFailed(out / stale, exc) from exc
        io.write_json(out / "curve.json", self.curve)
        io.write_json(out / "config.json", self.config.to_dict())
        import transformers

        meta = {
            "format": "xlprompt-run/1",
            "model_kind": self.model.backbone.kind,
            "label_names": list(self.model_label_names()),
            "parameters": parameter_counts(self.model),
            "info": self.info,
            "prompt_materialized": materialized,
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                         "python": platform.python_version()},
            "files": sorted(written),
        }
        io.write_json(out / "run.json", meta)
        self.path = out
        return out

    def model_label_names(self):
        from ..tasks.custom import get_task_for

        return get_task_for(self.config).label_names

    @staticmethod
    def complete_folder(run_dir: str | Path) -> Path:
        """`run_dir` as a Path, or an error saying why it is not a complete run folder."""
        run_dir = Path(run_dir)
        if not (run_dir / "run.json").exists():
            hint = "it is still being written or training crashed" if run_dir.is_dir() else "it does not exist"
            raise XlpromptError(f"{run_dir} is not a complete xlprompt run folder ({hint}); "
                                "train one with `xlprompt train --out DIR`.")
        return run_dir

    @classmethod
    def read_config(cls, run_dir: str | Path) -> TrainConfig:
        """The config of a complete run folder, without loading the model (an execution plan needs it)."""
        run_dir = cls.complete_folder(run_dir)
        try:
            return TrainConfig.from_dict(io.read_json(run_dir / "config.json"))
        except XlpromptError as exc:
            raise XlpromptError(f"{run_dir}/config.json: {exc}") from None
        except Exception as exc:  # missing, truncated, or values of the wrong type
            raise XlpromptError(f"{run_dir} is damaged and cannot be loaded ({type(exc).__name__}: {exc}); "
                                "train it again or restore the folder from a copy.") from exc

    @classmethod
    def load(cls, run_dir: str | Path, backbone=None, *, device=None, dtype=None, plan=None) -> "Run":
        """A saved run, its model on `device` with the backbone in `dtype` (default auto: the execution
        plan's choice for this machine, execution/plan.py), or where a resolved `plan` says: where it
        trained does not matter, the folder holds fp32 tensors."""
        from ..models.classifier import build_classifier
        from ..tasks.custom import get_task_for

        run_dir = cls.complete_folder(run_dir)
        try:
            return cls._load(run_dir, backbone, build_classifier, get_task_for, load_trainable_state,
                             device, dtype, plan)
        except XlpromptError as exc:
            if str(run_dir) in str(exc):
                raise
            raise XlpromptError(f"{run_dir}: {exc}") from None
        except Exception as exc:  # a damaged folder: truncated JSON or tensors, values of the wrong type
            raise XlpromptError(f"{run_dir} is damaged and cannot be loaded ({type(exc).__name__}: {exc}); "
                                "train it again or restore the folder from a copy.") from exc

    @classmethod
    def _load(cls, run_dir: Path, backbone, build_classifier, get_task_for, load_trainable_state,
              device=None, dtype=None, plan=None) -> "Run":
        config = TrainConfig.from_dict(io.read_json(run_dir / "config.json"))
        meta = io.read_json(run_dir / "run.json")
        if not isinstance(meta, dict):
            raise XlpromptError(f"{run_dir}/run.json is not a JSON object: the run folder is damaged.")
        # the saved tensors replace the initial prompt, so do not re-run an init that reads other runs
        # (init=run:DIR would fail once DIR is moved or deleted)
        shell = config
        if getattr(config.method, "init", "random").startswith("run:"):
            shell = dataclasses.replace(config, method=dataclasses.replace(config.method, init="random"))
        model = build_classifier(shell, get_task_for(config), backbone=backbone, device=device, dtype=dtype,
                                 plan=plan)
        if meta.get("prompt_materialized"):
            materialize_method(model)  # the fresh module must match the saved, net-free state
        # only the parts run.json lists: a stray file (another run's backbone) is never loaded, and a listed
        # part that is gone is an error, not a silently fresh prompt or head
        listed = meta.get("files")
        missing = [name for name in listed or () if name in FILES.values() and not (run_dir / name).exists()]
        if missing:
            raise XlpromptError(f"{run_dir} lists {', '.join(missing)} in run.json, but the file is missing: the "
                                "run folder is incomplete (copy it again, or train the run again).")
        state = {part: io.load_tensors(run_dir / name) for part, name in FILES.items()
                 if (run_dir / name).exists() and (listed is None or name in listed)}
        state.setdefault("head", {})
        load_trainable_state(model, state)
        model.backbone.requires_grad_(not config.freeze_model)
        model.eval()
        curve = io.read_json(run_dir / "curve.json")
        return cls(config=config, model=model, curve=curve, info=meta.get("info", {}), path=run_dir)


def save(run: Run, out_dir: str | Path) -> Path:
    return run.save(out_dir)


def load(run_dir: str | Path, backbone=None, *, device=None, dtype=None, plan=None) -> Run:
    return Run.load(run_dir, backbone=backbone, device=device, dtype=dtype, plan=plan)
