"""xlprompt: cross-lingual transfer with soft prompts on frozen multilingual models.

    import xlprompt
    run = xlprompt.fit(xlprompt.TrainConfig(shots=32, epochs=3))
    run.save("runs/sib200-e5")
    results = xlprompt.evaluate(xlprompt.load("runs/sib200-e5"), languages="all")
"""
from .runs.config import TrainConfig
from .core.errors import XlpromptError
from .prompts.config import InputPromptConfig

__version__ = "0.1.0"


def fit(config: TrainConfig | None = None, **kwargs):
    from .training.fit import fit as _fit

    return _fit(config, **kwargs)


def evaluate(run, languages="all", **kwargs) -> dict:
    from .evaluation.evaluate import evaluate as _evaluate

    return _evaluate(run, languages, **kwargs)


def adapt(run_dir, language: str, shots: int, **kwargs):
    """Continue a trained run on `shots` examples per class of one target language (prompt and head only)."""
    from .training.adapt import adapt as _adapt

    return _adapt(run_dir, language, shots, **kwargs)


def save(run, out_dir):
    return run.save(out_dir)


def load(run_dir, backbone=None, *, device=None, dtype=None):
    from .runs.run import Run

    return Run.load(run_dir, backbone=backbone, device=device, dtype=dtype)


__all__ = ["TrainConfig", "InputPromptConfig", "XlpromptError", "fit", "adapt", "evaluate", "save", "load",
           "__version__"]
