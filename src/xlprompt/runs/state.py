"""What a run folder holds, file by file, and how saved tensors go back into a model.

The bottom of the run layer: `run.py` (saving/loading folders), `training/fit.py` (restoring the best epoch)
and `prompts/init.py` (`init=run:DIR`) all read it, and it imports nothing of theirs, so the
dependencies point one way: training -> runs.run -> runs.state, prompts -> runs.state.
"""
from __future__ import annotations

from ..core.errors import XlpromptError

FILES = {"prompt": "prompt.safetensors", "head": "head.safetensors", "backbone": "backbone.safetensors"}


def load_trainable_state(model, state: dict) -> None:
    model.head.load_state_dict(state["head"])
    if model.method is not None and "prompt" in state:
        model.method.load_state_dict(state["prompt"])
    if "backbone" in state:
        load_backbone_state(model.backbone.model, state["backbone"])


def load_backbone_state(module, state: dict) -> None:
    """Load a (possibly de-duplicated) backbone state; only tied copies of loaded tensors may be missing."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    full = module.state_dict()
    loaded = {full[k].untyped_storage().data_ptr() for k in state}
    untied = [k for k in missing if full[k].untyped_storage().data_ptr() not in loaded]
    if unexpected or untied:
        raise XlpromptError(f"Saved model weights do not fit the model: missing {untied[:5]}, "
                            f"unexpected {list(unexpected)[:5]}.")
