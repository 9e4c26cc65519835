"""Initial values of an input soft prompt: random | vocab | text:PHRASE | run:RUN_DIR.

Each strategy returns an (L, d) float32 tensor; `initial_prompt` picks one from the config. With a
reparam net the tensor is the net's input (the trained parameter), not the prompt the model reads.
Token-based strategies go through the backbone's own input-embedding module, so models whose embedding
forward scales the table (XGLM multiplies by sqrt(d)) start in the space the model actually reads.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..core import io
from ..core.errors import XlpromptError
from ..runs.state import FILES


def fit_length(rows: torch.Tensor, length: int) -> torch.Tensor:
    """Repeat the rows cyclically, then cut, to exactly `length` rows."""
    reps = -(-length // rows.shape[0])  # ceil
    return rows.repeat(reps, 1)[:length]


def random_prompt(length: int, dim: int, init_range: float, generator: torch.Generator) -> torch.Tensor:
    """uniform(-init_range, init_range), drawn from `generator` so the prompt is deterministic in the seed."""
    return torch.empty(length, dim).uniform_(-init_range, init_range, generator=generator)


@torch.no_grad()
def embed_ids(backbone, ids: list[int]) -> torch.Tensor:
    table = backbone.input_embeddings
    device = table.weight.device
    return backbone.embed(torch.tensor(ids, dtype=torch.long, device=device)).detach().float().cpu()


def vocab_prompt(backbone, length: int, generator: torch.Generator) -> torch.Tensor:
    """Embeddings of `length` random vocabulary tokens (with replacement), special tokens excluded: their
    rows are often untrained or zero (padding) and carry no meaning to start from."""
    rows = backbone.input_embeddings.weight.shape[0]
    tokenizer = backbone.tokenizer
    # rows past the tokenizer's vocabulary are padding added for speed, never trained
    vocab = min(rows, len(tokenizer)) if tokenizer is not None else rows
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    candidates = torch.tensor([i for i in range(vocab) if i not in special] or list(range(vocab)))
    picks = torch.randint(0, len(candidates), (length,), generator=generator)
    return embed_ids(backbone, candidates[picks].tolist())


def text_prompt(backbone, phrase: str, length: int) -> torch.Tensor:
    """The phrase's token embeddings (no special tokens), repeated/cut to `length`."""
    tokenizer = backbone.tokenizer
    ids = tokenizer(phrase, add_special_tokens=False)["input_ids"] if phrase.strip() else []
    if not ids:
        raise XlpromptError(f"Prompt init text:{phrase!r} gives no tokens with the tokenizer of "
                            f"{backbone.name}: write a phrase after 'text:', e.g. --init 'text:the topic is'.")
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and unk in ids:
        warnings.warn(f"Prompt init text:{phrase!r} contains words the tokenizer of {backbone.name} maps to "
                      "its unknown token; those prompt vectors start from the <unk> embedding.", stacklevel=3)
    return fit_length(embed_ids(backbone, ids), length)


def run_prompt(run_dir: str, length: int, dim: int) -> torch.Tensor:
    """The final (materialised) prompt of a saved run, cut/repeated to `length`."""
    path = Path(run_dir).expanduser()
    if not path.is_dir():
        raise XlpromptError(f"Prompt init run:{run_dir}: {path} does not exist; pass the folder of a run "
                            "saved by `xlprompt train --out DIR`.")
    if not (path / "run.json").exists():
        raise XlpromptError(f"Prompt init run:{run_dir}: {path} is not a complete xlprompt run (no run.json); "
                            "pass a folder written by `xlprompt train --out DIR` that finished training.")
    prompt_file = path / FILES["prompt"]
    if not prompt_file.exists():
        raise XlpromptError(f"Prompt init run:{run_dir}: the run has no {FILES['prompt']} (it trained no "
                            "prompt, e.g. --method finetune or head); pass a run trained with --method prompt.")
    tensors = io.load_tensors(prompt_file)
    prompt = tensors.get("embedding")
    if prompt is None or prompt.dim() != 2 or set(tensors) != {"embedding"}:
        raise XlpromptError(f"Prompt init run:{run_dir}: {prompt_file.name} holds {sorted(tensors)}, not one "
                            "materialised input prompt ('embedding'); pass a run trained with --method prompt "
                            "(deep prompts cannot seed input prompts), or re-save it with this version.")
    if prompt.shape[1] != dim:
        raise XlpromptError(f"Prompt init run:{run_dir}: its prompt has hidden size {prompt.shape[1]} but this "
                            f"model has {dim}; initialise from a run of the same model (or a model with the "
                            "same hidden size), or use --init random.")
    if prompt.shape[0] != length:
        how = "cut" if prompt.shape[0] > length else "repeated"
        warnings.warn(f"Prompt init run:{run_dir}: its prompt has {prompt.shape[0]} vectors, this one {length}; "
                      f"the saved vectors are {how} to fit. Pass --prompt-length {prompt.shape[0]} to copy it "
                      "exactly.", stacklevel=3)
    return fit_length(prompt.float(), length)


def initial_prompt(config, backbone, generator: torch.Generator) -> torch.Tensor:
    """The (L, d) starting value for an InputPromptConfig's `init`."""
    length, dim = config.prompt_length, backbone.hidden_size
    if config.init == "random":
        return random_prompt(length, dim, config.init_range, generator)
    if config.init == "vocab":
        return vocab_prompt(backbone, length, generator)
    if config.init.startswith("text:"):
        return text_prompt(backbone, config.init[len("text:"):], length)
    if config.init.startswith("run:"):
        source = run_prompt(config.init[len("run:"):], length, dim)
        if config.reparam != "none":
            warnings.warn(f"Prompt init {config.init} with reparam={config.reparam}: the copied prompt is the "
                          "input of a new, untrained reparam net, so training starts from a transformed copy; "
                          "use --reparam none to continue from the saved prompt itself.", stacklevel=2)
        return source
    raise XlpromptError(f"Unknown prompt init {config.init!r}: use random, vocab, text:PHRASE or run:RUN_DIR.")
