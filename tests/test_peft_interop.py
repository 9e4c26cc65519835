"""PEFT interop against the real peft package: an exported adapter, loaded by `PeftModel.from_pretrained`
on the plain HF model, gives xlprompt's logits; importing it back gives the original run's logits."""
import json

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from xlprompt import InputPromptConfig, TrainConfig, XlpromptError, fit, load
from xlprompt.cli import app
from xlprompt.data.collate import encode_texts
from xlprompt.interop import export_peft, import_peft
from xlprompt.core.io import load_tensors, write_json
from xlprompt.prompts import DeepPromptConfig, FinetuneConfig, HeadOnlyConfig
from xlprompt.runs.run import Run

from conftest import toy_frame

import peft  # noqa: E402  (the test extra installs it: a broken install fails here, not skips)
TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread on a busy 2-core machine (see test_deep_prompt)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tiny_model_dir, toy_task, tmp_path_factory):
    """(family, method) -> (model dir, saved run folder, Run), trained briefly once per module."""
    made = {}

    def make(family, method):
        key = (family, repr(method))
        if key not in made:
            config = TrainConfig(task="toy", model=str(tiny_model_dir(family)), method=method, epochs=1,
                                 lr=0.1, seed=0)
            run = fit(config, progress=False)
            run_dir = run.save(tmp_path_factory.mktemp(f"run-{family}"))
            made[key] = tiny_model_dir(family), run_dir, run
        return made[key]

    return make


def texts(n=6):
    return toy_frame(n, 7, "deu_Latn")  # unseen 'language', lengths vary so batches are padded


def xlprompt_logits(run, frame):
    """The run's label logits through its own collator (its own prompt layout)."""
    model = run.model.eval()
    enc = encode_texts(model.backbone.tokenizer, frame.text.tolist(), frame.label.tolist(), 128)
    with torch.no_grad():
        return model(model.collator()(enc, list(range(len(frame)))))[:, :model.num_labels]


def peft_model(model_dir, adapter, decoder):
    from transformers import AutoModel, AutoModelForCausalLM

    base = (AutoModelForCausalLM if decoder else AutoModel).from_pretrained(model_dir)
    return peft.PeftModel.from_pretrained(base, adapter).eval()


def user_inputs(model_dir, frame):
    """What a PEFT user feeds: the tokenizer's own ids, right-padded (no xlprompt collator)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)(frame.text.tolist(), padding=True, return_tensors="pt")


def decoder_peft_logits(model_dir, adapter, frame, virtual):
    """LM logits at the last text token over the label-word ids the export wrote beside the adapter."""
    ids = json.loads((adapter / "xlprompt.json").read_text())["label_token_ids"]
    inputs = user_inputs(model_dir, frame)
    with torch.no_grad():
        logits = peft_model(model_dir, adapter, decoder=True)(**inputs).logits
    last = virtual + inputs["attention_mask"].sum(1) - 1  # prompt tuning puts the virtual tokens in the sequence
    return logits[torch.arange(len(frame)), last][:, ids]


def round_trip(adapter, run, tmp_path, frame):
    report = import_peft(adapter, tmp_path / "imported")
    back = load(tmp_path / "imported")
    assert (xlprompt_logits(back, frame) - xlprompt_logits(run, frame)).abs().max() < TOL
    return report, back


def test_decoder_input_prompt_matches_peft(trained, tmp_path):
    model_dir, run_dir, run = trained("gpt2", InputPromptConfig(prompt_length=3, position="start"))
    report = export_peft(run_dir, tmp_path / "adapter")
    assert report.peft_type == "PROMPT_TUNING" and report.task_type == "CAUSAL_LM" and report.predictions_match
    assert "label words" in report.text() and "not part of a PEFT adapter" in report.text()
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(model_dir.resolve()) and cfg["num_virtual_tokens"] == 3
    frame = texts()
    ours = xlprompt_logits(run, frame)
    assert (decoder_peft_logits(model_dir, tmp_path / "adapter", frame, 3) - ours).abs().max() < TOL
    _, back = round_trip(tmp_path / "adapter", run, tmp_path, frame)
    assert back.config.method.position == "start"


def test_encoder_input_prompt_and_head_match_peft(trained, tmp_path):
    model_dir, run_dir, run = trained("bert", InputPromptConfig(prompt_length=3, position="start"))
    adapter = tmp_path / "adapter"
    report = export_peft(run_dir, adapter)
    assert report.task_type == "FEATURE_EXTRACTION" and report.predictions_match
    assert "head.safetensors" in report.text() and "head.safetensors" in (adapter / "README.md").read_text()
    frame = texts()
    inputs = user_inputs(model_dir, frame)
    with torch.no_grad():
        hidden = peft_model(model_dir, adapter, decoder=False)(**inputs).last_hidden_state
    # the run's head: a linear layer over the mean of every attended position, virtual tokens included
    mask = torch.cat([torch.ones(len(frame), 3), inputs["attention_mask"].float()], 1).unsqueeze(-1)
    head = load_tensors(adapter / "head.safetensors")
    theirs = F.linear((hidden * mask).sum(1) / mask.sum(1), head["linear.weight"], head["linear.bias"])
    assert (theirs - xlprompt_logits(run, frame)).abs().max() < TOL
    round_trip(adapter, run, tmp_path, frame)  # the head comes back from head.safetensors beside the adapter


def test_decoder_prefix_matches_peft(trained, tmp_path):
    model_dir, run_dir, run = trained("xglm", DeepPromptConfig(prompt_length=3))
    report = export_peft(run_dir, tmp_path / "adapter")
    assert report.peft_type == "PREFIX_TUNING" and report.predictions_match
    frame = texts()
    ours = xlprompt_logits(run, frame)
    assert (decoder_peft_logits(model_dir, tmp_path / "adapter", frame, 0) - ours).abs().max() < TOL
    round_trip(tmp_path / "adapter", run, tmp_path, frame)


def untrained_run(model_dir, tmp_path, method, **kw):
    """A run folder without training: refusals and layout notes do not need a trained prompt."""
    from xlprompt.models.classifier import build_classifier
    from xlprompt.tasks import get_task

    config = TrainConfig(task="toy", model=str(model_dir), method=method, **kw)
    return Run(config, build_classifier(config, get_task("toy"))).save(tmp_path / f"run-{method.type}")


def test_default_layout_exports_with_a_clear_warning(tiny_model_dir, toy_task, tmp_path):
    run_dir = untrained_run(tiny_model_dir("gpt2"), tmp_path, InputPromptConfig(prompt_length=2))
    report = export_peft(run_dir, tmp_path / "adapter")
    assert not report.predictions_match
    for text in (report.text(), (tmp_path / "adapter" / "README.md").read_text()):
        assert "trained after the text" in text and "PEFT prepends it" in text and "will differ" in text
    run = load(run_dir)
    _, back = round_trip(tmp_path / "adapter", run, tmp_path, texts())  # xlprompt.json keeps the layout
    assert back.config.method.position == "auto"


def test_refusals(tiny_model_dir, toy_task, tmp_path):
    bert, gpt2 = tiny_model_dir("bert"), tiny_model_dir("gpt2")
    for method, kw, words in [(FinetuneConfig(), {}, "no prompt"), (HeadOnlyConfig(), {}, "no prompt"),
                              (InputPromptConfig(prompt_length=2), {"freeze_model": False}, "--no-freeze")]:
        run_dir = untrained_run(bert, tmp_path, method, **kw)
        with pytest.raises(XlpromptError, match=words):
            export_peft(run_dir, tmp_path / "never")
        assert not (tmp_path / "never").exists()
    adapter = tmp_path / "adapter"
    export_peft(untrained_run(bert, tmp_path, DeepPromptConfig(prompt_length=2)), adapter)
    with pytest.raises(XlpromptError, match="already exists"):
        export_peft(untrained_run(bert, tmp_path, DeepPromptConfig(prompt_length=2)), adapter)
    (adapter / "head.safetensors").unlink()  # a PEFT adapter from elsewhere has no head
    with pytest.raises(XlpromptError, match="--head"):
        import_peft(adapter, tmp_path / "imported")
    lora = tmp_path / "lora"
    write_json(lora / "adapter_config.json", {"peft_type": "LORA", "base_model_name_or_path": str(gpt2)})
    with pytest.raises(XlpromptError, match="LORA"):
        import_peft(lora, tmp_path / "imported")
    pickled = tmp_path / "pickled"
    write_json(pickled / "adapter_config.json", {"peft_type": "PROMPT_TUNING", "base_model_name_or_path": str(gpt2)})
    (pickled / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(XlpromptError, match="pickle"):
        import_peft(pickled, tmp_path / "imported")
    assert not (tmp_path / "imported").exists()


def test_import_of_a_peft_saved_adapter_and_the_cli(tiny_model_dir, toy_task, tmp_path):
    """An adapter PEFT itself wrote (no xlprompt.json) imports as a position='start' run; the CLI prints
    the export report and one error line for a bad format."""
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_dir("gpt2")
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    peft.get_peft_model(base, cfg).save_pretrained(tmp_path / "theirs")
    runner = CliRunner()
    res = runner.invoke(app, ["import-peft", str(tmp_path / "theirs"), "--out", str(tmp_path / "run"),
                              "--task", "toy", "--model", str(model_dir)])
    assert res.exit_code == 0, res.output
    assert load(tmp_path / "run").config.method.position == "start"
    saved = load_tensors(tmp_path / "theirs" / "adapter_model.safetensors")["prompt_embeddings"]
    assert torch.equal(load_tensors(tmp_path / "run" / "prompt.safetensors")["embedding"], saved)
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--format", "peft", "--out", str(tmp_path / "again")])
    assert res.exit_code == 0, res.output
    assert "not in the adapter" in res.output and "label words" in res.output
    assert torch.equal(load_tensors(tmp_path / "again" / "adapter_model.safetensors")["prompt_embeddings"], saved)
    res = runner.invoke(app, ["export", str(tmp_path / "run"), "--format", "onnx", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "only format is peft" in res.output


def test_encoder_prefix_is_read_by_peft_and_differs_only_by_positions(trained, tmp_path):
    """A deep prompt on an encoder, exported and read by real `peft` (prefix tuning, feature extraction).
    PEFT lets BERT number the text after the prefix, xlprompt keeps the text's own positions: the export
    says predictions differ, and with the text's positions given explicitly PEFT gives the run's logits,
    so the adapter holds exactly the trained prefix."""
    model_dir, run_dir, run = trained("bert", DeepPromptConfig(prompt_length=3))
    adapter = tmp_path / "adapter"
    report = export_peft(run_dir, adapter)
    assert report.peft_type == "PREFIX_TUNING" and report.task_type == "FEATURE_EXTRACTION"
    assert not report.predictions_match and "positions" in report.text()
    frame = texts()
    inputs = user_inputs(model_dir, frame)
    head = load_tensors(adapter / "head.safetensors")
    mask = inputs["attention_mask"].float().unsqueeze(-1)  # prefixes are keys and values, not positions
    model = peft_model(model_dir, adapter, decoder=False)
    positions = torch.arange(inputs["input_ids"].shape[1]).expand_as(inputs["input_ids"])
    prefix_mask = torch.cat([torch.ones(len(frame), 3, dtype=inputs["attention_mask"].dtype),
                             inputs["attention_mask"]], 1)
    with torch.no_grad():
        shifted = model(**inputs).last_hidden_state  # PEFT's own forward (it drops position_ids given to it)
        # the base model with PEFT's prefix cache, numbering the text from 0 as xlprompt does
        own = model.base_model(input_ids=inputs["input_ids"], attention_mask=prefix_mask, position_ids=positions,
                               past_key_values=model.get_prompt(batch_size=len(frame))).last_hidden_state
    ours = xlprompt_logits(run, frame)
    for hidden, same in ((own, True), (shifted, False)):
        theirs = F.linear((hidden * mask).sum(1) / mask.sum(1), head["linear.weight"], head["linear.bias"])
        assert bool((theirs - ours).abs().max() < TOL) == same
    round_trip(adapter, run, tmp_path, frame)
