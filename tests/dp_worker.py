"""One process of the data-parallel test (tests/test_device.py): `torchrun --nproc_per_node 2 dp_worker.py
MODEL_DIR OUT_FILE` trains the toy task; rank 0 writes the trained prompt and head (safetensors)."""
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(1)

from conftest import _register_toy  # noqa: E402

from xlprompt.core import io  # noqa: E402
from xlprompt.execution.distributed import main_process  # noqa: E402
from xlprompt.training.fit import fit  # noqa: E402


def config(model_dir: str):
    from xlprompt import TrainConfig
    from xlprompt.prompts.config import InputPromptConfig

    return TrainConfig(task="toy", model=model_dir, method=InputPromptConfig(prompt_length=3), epochs=2, batch_size=8,
                       lr=0.1, seed=0)


def state(run) -> dict:
    parts = run.model.trainable_state()
    return {f"{part}.{k}": v for part, tensors in parts.items() for k, v in tensors.items()}


if __name__ == "__main__":
    _register_toy()
    run = fit(config(sys.argv[1]), progress=False, device="cpu")
    if main_process():
        io.save_tensors(sys.argv[2], state(run))
        io.write_json(sys.argv[2] + ".json", {"processes": run.info["speed"]["processes"],
                                              "world": int(os.environ.get("WORLD_SIZE", "1"))})
