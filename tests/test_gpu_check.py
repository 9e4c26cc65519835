"""benchmarks/gpu_check.py end to end in its --smoke mode (tiny shapes, 3 languages) on this machine's
device: every check runs through xlprompt's own code paths and lands in one table and the JSON."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_smoke_runs_end_to_end(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True and report["device_name"] in proc.stdout
    checks = [row["check"] for row in report["rows"]]
    assert checks.count("evaluate, e5-small shape") == 2
    assert {row["dtype"] for row in report["rows"] if "dtype" in row} == {"fp32", "bf16"}
    agreement = next(row for row in report["rows"] if row["check"].endswith("vs CPU predictions"))
    assert agreement["fp32_ok"] and agreement["bf16_argmax_agreement"] >= 0.9
    for model in ("xglm-564M", "xlm-r-large"):
        row = next(r for r in report["rows"] if r["check"] == f"train, {model} shape")
        assert row["xlprompt_examples_per_second"] > 0 and row["peft_examples_per_second"] > 0, row
    largest = next(r for r in report["rows"] if r["check"] == "train, xglm-7.5B shape")
    assert largest["step_seconds"] > 0
    assert proc.stdout.count("\n| ") >= len(report["rows"])  # one table row per check


def test_gpu_check_refuses_the_full_check_without_a_gpu():
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=300)
    assert proc.returncode == 2 and "--smoke" in proc.stderr
