"""Training mechanics on tiny random models of every supported family."""
import json

import pytest
import torch

from xlprompt.core.errors import XlpromptError
from xlprompt import TrainConfig, fit, load
from xlprompt.data.collate import encode_texts
from xlprompt.evaluation.evaluate import predict_encoded
from xlprompt.prompts.config import InputPromptConfig

from conftest import DECODERS, FAMILIES


def make_config(model_dir, **kw):
    base = dict(task="toy", model=str(model_dir), method=InputPromptConfig(prompt_length=3), epochs=6, batch_size=8,
                lr=0.1, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def train_loss(run, frame_split="train"):
    """The training objective (all of the head's columns) on a split, in eval mode."""
    import torch.nn.functional as F
    from xlprompt.tasks import get_task

    frame = get_task("toy").load(frame_split, "eng_Latn")
    model = run.model
    enc = encode_texts(model.backbone.tokenizer, frame["text"].tolist(), frame["label"].tolist(), 128)
    model.eval()
    with torch.no_grad():
        batch = model.collator()(enc, list(range(len(enc))))
        return F.cross_entropy(model(batch), batch.labels).item()


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_training_learns_and_keeps_backbone_frozen(family, tiny_model_dir, toy_task):
    from xlprompt.models.classifier import build_classifier

    config = make_config(tiny_model_dir(family))
    model = build_classifier(config, toy_task)
    before = {k: v.clone() for k, v in model.backbone.model.state_dict().items()}
    initial = None

    class Probe:  # loss of the untrained model, through the same evaluation path
        pass

    probe = Probe()
    probe.model = model
    initial = train_loss(probe)
    run = fit(config, model=model, progress=False)
    after = run.model.backbone.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "frozen backbone changed"
    assert train_loss(run) < initial - 0.05
    assert run.model.backbone.kind == ("decoder" if family in DECODERS else "encoder")
    # only prompt and head had gradients
    for name, p in run.model.named_parameters():
        if name.startswith("backbone."):
            assert not p.requires_grad and p.grad is None, name


@pytest.mark.parametrize("family", ["xglm", "xlm-roberta"])
def test_save_load_round_trip_gives_identical_logits(family, tiny_model_dir, toy_task, tmp_path):
    run = fit(make_config(tiny_model_dir(family), epochs=2), progress=False)
    run.save(tmp_path / "run")
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert "config.json" in files and "curve.json" in files and "run.json" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    again = load(tmp_path / "run")
    frame = toy_task.load("test", "deu_Latn")
    enc = encode_texts(run.model.backbone.tokenizer, frame["text"].tolist(), frame["label"].tolist(), 128)
    assert (predict_encoded(run.model, enc) == predict_encoded(again.model, enc)).all()
    curve = json.loads((tmp_path / "run" / "curve.json").read_text())
    assert len(curve) == 2 and {"train_loss", "dev_loss", "dev_accuracy"} <= set(curve[0])


def test_same_seed_same_numbers(tiny_model_dir, toy_task):
    a = fit(make_config(tiny_model_dir("bert"), epochs=2), progress=False)
    b = fit(make_config(tiny_model_dir("bert"), epochs=2), progress=False)
    assert a.curve[-1]["dev_loss"] == b.curve[-1]["dev_loss"]
    assert torch.equal(a.model.method.embedding, b.model.method.embedding)


def test_progress_goes_to_logs_as_plain_lines(tiny_model_dir, toy_task, monkeypatch, capsys):
    """Output redirected to a file gets timed plain lines (a rich bar would appear only at the end)."""
    import xlprompt.core.progress

    monkeypatch.setattr(xlprompt.core.progress, "LOG_INTERVAL", 0.0)
    run = fit(make_config(tiny_model_dir("bert"), epochs=2), progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("training ")]
    steps = run.curve[-1]["step"]
    assert lines[0].startswith(f"training 1/{steps} (") and "eta" in lines[0]
    assert lines[-1].startswith(f"training {steps}/{steps} (100%)") and "epoch 2/2 dev loss" in lines[-1]
    assert sum("dev loss" in line for line in lines) == 2  # each epoch's dev result gets its own line
    assert len(lines) == steps + 2  # one line per step at interval 0 plus the two epoch results


def test_decoder_label_position_is_last_prompt_slot(tiny_model_dir, toy_task):
    from xlprompt.models.classifier import build_classifier

    model = build_classifier(make_config(tiny_model_dir("xglm")), toy_task)
    tok = model.backbone.tokenizer
    enc = encode_texts(tok, ["alpha w1 w2", "beta w3"], [1, 0], 128)
    batch = model.collator()(enc, [0, 1])
    for r in range(2):
        ids = batch.input_ids[r][batch.attention_mask[r].bool()].tolist()
        # </s>(bos) text P P P </s>
        assert ids[-1] == tok.eos_token_id
        assert batch.prompt_mask[r].nonzero().flatten().tolist()[-1] == batch.label_positions[r].item()
        assert batch.label_positions[r].item() == len(ids) - 2


def test_encoder_prompt_follows_first_special_token(tiny_model_dir, toy_task):
    from xlprompt.models.classifier import build_classifier

    model = build_classifier(make_config(tiny_model_dir("bert")), toy_task)
    enc = encode_texts(model.backbone.tokenizer, ["alpha w1"], [1], 128)
    batch = model.collator()(enc, [0])
    assert batch.prompt_mask[0].tolist() == [False, True, True, True, False, False, False]
    assert batch.input_ids[0, 0].item() == model.backbone.tokenizer.cls_token_id or batch.input_ids[0, 0] == 0


def test_head_weight_decay_regularises_the_head_alone(tiny_model_dir, toy_task):
    """Issue 15 asks whether the prompt loses to the (L2-regularised) probe because its head is not
    regularised: --head-weight-decay decays the head and leaves the prompt's optimizer as it was."""
    from xlprompt.core.errors import XlpromptError
    from xlprompt.training.fit import param_groups

    plain = fit(make_config(tiny_model_dir("xlm-roberta"), epochs=3), progress=False)
    decayed = fit(make_config(tiny_model_dir("xlm-roberta"), epochs=3, head_weight_decay=20.0), progress=False)
    norm = lambda run: torch.linalg.vector_norm(run.model.head.linear.weight).item()  # noqa: E731
    assert norm(decayed) < 0.5 * norm(plain)
    groups = param_groups(decayed.model, decayed.config)
    assert groups[0]["weight_decay"] == 20.0 and all("weight_decay" not in g for g in groups[1:])
    with pytest.raises(XlpromptError, match="head_weight_decay"):
        make_config(tiny_model_dir("xlm-roberta"), head_weight_decay=-1.0)


def test_a_run_folder_holds_only_its_own_parts(tiny_model_dir, toy_task, tmp_path):
    """A frozen prompt run saved over a fine-tuning run's folder must not leave (or load) that run's
    backbone: loading the folder would otherwise swap the fine-tuned weights in under the prompt."""
    from xlprompt import load
    from xlprompt.prompts.config import FinetuneConfig

    folder = tmp_path / "run"
    tuned = fit(make_config(tiny_model_dir("bert"), method=FinetuneConfig(), epochs=1), progress=False)
    tuned.save(folder)
    assert (folder / "backbone.safetensors").exists()
    prompt = fit(make_config(tiny_model_dir("bert"), epochs=1), progress=False)
    prompt.save(folder)
    assert not (folder / "backbone.safetensors").exists()
    assert json.loads((folder / "run.json").read_text())["files"] == ["head.safetensors", "prompt.safetensors"]
    fresh = load(folder).model.backbone.model.state_dict()
    frozen = prompt.model.backbone.model.state_dict()
    assert all(torch.equal(fresh[k], frozen[k]) for k in frozen)
    # a stray part file that run.json does not list is never read
    tuned.save(tmp_path / "tuned")
    (folder / "backbone.safetensors").write_bytes((tmp_path / "tuned" / "backbone.safetensors").read_bytes())
    fresh = load(folder).model.backbone.model.state_dict()
    assert all(torch.equal(fresh[k], frozen[k]) for k in frozen)
    texts = ["alpha w1 w2", "beta w3", "alpha w4 w5 w6"]
    with torch.no_grad():
        assert load(folder).predict(texts, precision="fp32") == prompt.predict(texts, precision="fp32")
    # a part run.json lists that has gone missing is an error, not a fresh random prompt
    (folder / "prompt.safetensors").unlink()
    with pytest.raises(XlpromptError, match="prompt.safetensors .*missing"):
        load(folder)


def test_saving_over_a_run_removes_its_results_and_results_never_pair_new_json_with_old_csv(
        tiny_model_dir, toy_task, tmp_path, monkeypatch):
    from xlprompt.core import io
    from xlprompt.evaluation import evaluate as evaluation

    folder = tmp_path / "run"
    run = fit(make_config(tiny_model_dir("bert"), epochs=1), progress=False)
    run.save(folder)
    evaluation.write_results(evaluation.evaluate(run, "all", progress=False, threads=1), folder / "results.json")
    assert (folder / "results.csv").exists()
    run.save(folder)  # another run over the folder (here the same one): its old evaluation goes
    assert not (folder / "results.json").exists() and not (folder / "results.csv").exists()

    results = evaluation.evaluate(run, "all", progress=False, threads=1)
    evaluation.write_results(results, folder / "results.json")
    back, table = evaluation.read_results(folder / "results.json")  # a pair: same results_id in both
    assert back["languages"] == results["languages"] and set(table["language"]) == set(results["languages"])
    old_csv = (folder / "results.csv").read_bytes()
    evaluation.write_results({**results, "split": "other"}, folder / "results.json")
    (folder / "results.csv").write_bytes(old_csv)  # a torn pair, however it came about, is told apart
    with pytest.raises(XlpromptError, match="results_id differs"):
        evaluation.read_results(folder / "results.json")
    real = io.atomic_path

    def crash_on_csv(path, *a, **k):
        if str(path).endswith(".csv"):
            raise RuntimeError("crashed between the JSON and the CSV")
        return real(path, *a, **k)

    monkeypatch.setattr(io, "atomic_path", crash_on_csv)
    with pytest.raises(RuntimeError):
        evaluation.write_results({**results, "split": "dev"}, folder / "results.json")
    assert json.loads((folder / "results.json").read_text())["split"] == "dev"
    assert not (folder / "results.csv").exists()  # no CSV of the older results beside the new JSON
    with pytest.raises(XlpromptError, match="missing"):
        evaluation.read_results(folder / "results.json")
