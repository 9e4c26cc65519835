"""A new method and a new setting touch their own module and one registration: this file alone defines a
toy prompt method with a toy option, registers it, and takes it through train → save → load → evaluate →
serve → grid → store → report axes → the CLI, with no other file changed."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from xlprompt import TrainConfig, evaluate, fit, load
from xlprompt.data.collate import encode_texts
from xlprompt.evaluation.evaluate import predict_encoded
from xlprompt.prompts import PromptedInputs, register_method
from xlprompt.prompts.config import METHOD_ALIASES, METHOD_CONFIGS
from xlprompt.core.settings import setting


@dataclass
class TiedPromptConfig:
    """Toy: one trained vector written into every one of L input slots, times a fixed `gain`."""

    prompt_length: int = setting(3, "Prompt length L.", aliases=("length",), id_key="length")
    gain: float = setting(1.0, "Toy setting: the tied vector's fixed multiplier.", id_neutral=1.0)
    type: str = field(default="tied_prompt", init=False)
    cli_name = "tied"
    label = "tied prompt"
    enters = "input"
    trains_backbone = False
    peft_type = None
    uses_label_words = True
    fits_by_probe = False


class TiedPrompt(nn.Module):
    def __init__(self, config: TiedPromptConfig, dim: int, generator: torch.Generator):
        super().__init__()
        self.config = config
        self.vector = nn.Parameter(torch.empty(dim).uniform_(-0.5, 0.5, generator=generator))

    num_slots = property(lambda self: self.config.prompt_length)
    materialized = True

    def materialize(self):
        return self

    def prompt_embeddings(self) -> torch.Tensor:
        return (self.config.gain * self.vector).expand(self.config.prompt_length, -1)

    def forward(self, embeds, attention_mask, prompt_mask) -> PromptedInputs:
        embeds = embeds.clone()
        embeds[prompt_mask] = self.prompt_embeddings().to(embeds.dtype).repeat(embeds.shape[0], 1)
        return PromptedInputs(embeds, attention_mask)


@pytest.fixture(scope="module")
def tied():
    register_method(TiedPromptConfig, lambda config, backbone, g: TiedPrompt(config, backbone.hidden_size, g))
    yield TiedPromptConfig
    METHOD_CONFIGS.pop("tied_prompt")
    METHOD_ALIASES.pop("tied")


def test_a_registered_toy_method_and_setting_go_everywhere(tied, tiny_model_dir, toy_task, tmp_path):
    from xlprompt.analysis import tables
    from xlprompt.experiments.grid import expand_grid
    from xlprompt.experiments.runner import run_sweep
    from xlprompt.experiments.store import load_store
    from xlprompt.serving import PromptBank

    model = str(tiny_model_dir("xlm-roberta"))
    config = TrainConfig(task="toy", model=model, method=tied(gain=2.0), epochs=2, batch_size=8, lr=0.05)
    run = fit(config, progress=False)
    run.save(tmp_path / "run")
    again = load(tmp_path / "run")
    assert again.config.method == config.method and again.config.method.gain == 2.0
    assert torch.equal(again.model.method.vector, run.model.method.vector)
    results = evaluate(again, "all", progress=False)
    assert 0.0 <= results["languages"]["eng_Latn"]["accuracy"] <= 1.0

    # serving: the mixed-prompt bank writes the tied vectors itself and agrees with the run's own forward
    bank = PromptBank.from_runs({"tied": tmp_path / "run"}, precision="fp32")
    assert bank.get("tied").info()["method"] == "tied_prompt" and bank.get("tied").prompt_length == 3
    texts = ["alpha w1", "beta w2 w3 w4"]
    served = bank.classify(["tied"] * 2, texts)
    encoded = encode_texts(again.model.backbone.tokenizer, texts, [0, 0], again.config.max_length)
    own = torch.softmax(torch.tensor(predict_encoded(again.model, encoded), dtype=torch.float64), -1).numpy()
    np.testing.assert_allclose([p.scores for p in served], own, atol=1e-5)

    # grid and store: the method by its command-line name, its option as a grid key and a store column
    grid = {"fixed": {"task": "toy", "model": model, "epochs": 1, "method": "tied", "languages": "all"},
            "axes": {"gain": [1.0, 3.0]}}
    specs = expand_grid(grid)
    assert [s.config.method.gain for s in specs] == [1.0, 3.0]
    # id_neutral: at its neutral value the toy setting leaves the id as if the option did not exist
    base = {**specs[0].to_dict()}
    base["config"] = {**base["config"], "method": {k: v for k, v in base["config"]["method"].items() if k != "gain"}}
    from xlprompt.experiments.grid import run_id
    assert run_id(base) == specs[0].run_id != specs[1].run_id
    assert run_sweep(specs, tmp_path / "store", progress=False).complete
    frame = load_store(tmp_path / "store")
    assert sorted(frame["gain"].unique()) == [1.0, 3.0] and set(frame["method"]) == {"tied_prompt"}
    assert "gain" in tables.axes() and tables.method_label("tied_prompt") == "tied prompt"
    assert tables.is_kind(frame["method"], "input").all()

    # the CLI: `--method tied` and the toy option are train options, derived from the declarations
    from xlprompt.cli import app

    out = CliRunner().invoke(app, ["train", "--task", "toy", "--model", model, "--method", "tied", "--gain", "0.5",
                                   "--epochs", "1", "--out", str(tmp_path / "cli-run")])
    assert out.exit_code == 0, out.output
    assert load(tmp_path / "cli-run").config.method == tied(gain=0.5)
    wrong = CliRunner().invoke(app, ["train", "--task", "toy", "--model", model, "--method", "deep", "--gain", "2",
                                     "--out", str(tmp_path / "bad")])
    assert wrong.exit_code == 2 and "--gain does not apply to --method deep" in wrong.output


def test_a_new_setting_reads_as_declared(tied):
    from xlprompt.analysis import tables

    frame = pd.DataFrame({"shots": pd.array([None, 8], dtype="Int64"), "method": ["tied_prompt", "input_prompt"],
                          "head_weight_decay": [None, 0.1], "gain": [2.0, None]})
    shown = tables.shown(frame)
    assert list(shown["shots"]) == ["all", "8"] and list(shown["method"]) == ["tied prompt", "input prompt"]
    assert list(shown["head_weight_decay"]) == ["weight_decay", "0.1"] and list(shown["gain"])[0] == "2.0"
