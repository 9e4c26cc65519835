"""Where one training step's time goes: xlprompt's step vs PEFT's on the same backbone and batches, under
torch.profiler. For when `gpu_check.py`'s training rows show a gap that the step medians alone don't explain.

    python benchmarks/profile_step.py --model xlm-r-large            # on a GPU: real shape, random weights
    python benchmarks/profile_step.py --model xlm-r-large --smoke    # tiny shape, any device

Prints, per system: the batch's input shape, the median step in two alternating rounds (so neither system
gains from going second), and the ops with the most self time on the device and on the host.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import gpu_check as g  # noqa: E402  (benchmarks/gpu_check.py: shapes, random models, both step functions)


def first_layer_shapes(model: torch.nn.Module, step, rows) -> list[tuple]:
    """The hidden-state shapes entering the first transformer layer during one step (what the model computes)."""
    layer = next(m for n, m in model.named_modules() if n.endswith(("layer.0", "layers.0")))
    seen = []
    handle = layer.register_forward_pre_hook(lambda mod, a, kw: seen.append(tuple((a or (kw.get("hidden_states"),))[0].shape)), with_kwargs=True)
    try:
        step(rows)
    finally:
        handle.remove()
    return seen


@contextlib.contextmanager
def unpinned_copies():
    """xlprompt's step with plain blocking host-to-device copies (no pin_memory), to price the pinning."""
    import xlprompt.execution.device as d

    pinned = d.to_device

    def plain(batch, device):
        for name, value in vars(batch).items():
            if isinstance(value, torch.Tensor):
                setattr(batch, name, value.to(device))
        return batch
    d.to_device = plain
    try:
        yield
    finally:
        d.to_device = pinned


def profile(step, batches, device, top: int) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        for rows in batches:
            step(rows)
    g.sync(device)
    table = prof.key_averages()
    out = []
    if device.type == "cuda":
        out.append(table.table(sort_by="self_cuda_time_total", row_limit=top, max_name_column_width=60))
    out.append(table.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=60))
    return "\n".join(out)


def main(argv=None) -> int:
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from train_speed import peft_step_fn
    from xlprompt.execution.device import configure, resolve_device
    from xlprompt.models.backbone import Backbone

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="xlm-r-large", choices=sorted(g.SHAPES))
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args(argv)
    hf_logging.set_verbosity_error()
    device = resolve_device(args.device)
    configure(device)
    tokenizer = AutoTokenizer.from_pretrained(g.tokenizer_dir(None))
    kind = "decoder" if args.model.startswith("xglm") else "encoder"
    backbone = Backbone(g.random_model(args.model, args.smoke, device, torch.bfloat16), tokenizer, kind, args.model)
    encoded, batches = g.sib_batches(tokenizer, args.batch, args.steps + 1)
    steps = {"xlprompt": g.xlprompt_step(backbone, encoded, device)}
    with unpinned_copies():
        steps["xlprompt, unpinned copies"] = g.xlprompt_step(backbone, encoded, device)
    steps["peft"] = peft_step_fn(backbone, encoded, device)[0]
    medians = {name: [] for name in steps}
    for order in (list(steps), list(steps)[::-1]):
        for name in order:
            medians[name].append(g.timed(steps[name], batches, device)[0])
    print(f"{args.model} on {device}, batch {args.batch}, {args.steps} steps, bf16 weights")
    for name, values in medians.items():
        print(f"  {name}: median step {' / '.join(f'{v * 1000:.1f}' for v in values)} ms (two rounds)")
    for name, step in steps.items():
        print(f"  {name}: first-layer input {first_layer_shapes(backbone.model, step, batches[1])}")
    for name, step in steps.items():
        if "unpinned" in name:
            continue
        print(f"\n===== {name}: profile of {min(args.steps, 5)} steps")
        print(profile(step, batches[1:1 + min(args.steps, 5)], device, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
