"""The decoder fast path computes the same loss as the naive full-vocabulary computation."""
import pytest
import torch
import torch.nn.functional as F

from xlprompt import TrainConfig
from xlprompt.data.collate import encode_texts
from xlprompt.prompts.config import InputPromptConfig


@pytest.mark.parametrize("family", ["xglm", "bloom", "gpt2"])
@pytest.mark.parametrize("loss_over", ["vocabulary", "labels"])
def test_fast_path_loss_equals_naive_full_logits(family, loss_over, tiny_model_dir, toy_task):
    from xlprompt.models.classifier import build_classifier

    cfg = TrainConfig(task="toy", model=str(tiny_model_dir(family)), method=InputPromptConfig(prompt_length=3),
                      loss_over=loss_over)
    model = build_classifier(cfg, toy_task)
    model.train()
    torch.manual_seed(0)
    enc = encode_texts(model.backbone.tokenizer, ["alpha w1 w2 w3", "beta w4", "alpha w5 w6"], [1, 0, 1], 128)
    batch = model.collator()(enc, [0, 1, 2])
    model.backbone.model.eval(); model.eval()  # no dropout, so both computations see the same network
    fast = F.cross_entropy(model(batch), batch.labels)
    assert model(batch).shape[1] == (3 if loss_over == "vocabulary" else 2)

    # naive: the full LM forward with logits at every position, then pick the label position
    embeds = model.backbone.embed(batch.input_ids)
    prompted = model.method(embeds, batch.attention_mask, batch.prompt_mask)
    full = model.backbone.model(inputs_embeds=prompted.embeds, attention_mask=batch.attention_mask).logits
    assert full.shape[:2] == batch.input_ids.shape  # (B, T, V): what the fast path never builds
    at_label = full[torch.arange(3), batch.label_positions]
    ids = model.head.token_ids
    if loss_over == "vocabulary":
        naive = F.cross_entropy(at_label, ids[batch.labels])
    else:
        naive = F.cross_entropy(at_label[:, ids], batch.labels)
    assert torch.allclose(fast, naive, atol=1e-5), (fast, naive)
    # predictions are the argmax over the label words in both cases
    assert torch.equal(model(batch)[:, :2].argmax(-1), at_label[:, ids].argmax(-1))
