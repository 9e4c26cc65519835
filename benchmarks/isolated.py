"""What the benchmark scripts share: each measurement runs in a fresh interpreter (its own memory peak and
caches), re-invoking the script with `--child SPEC` and reading one `RESULT {json}` line back."""
from __future__ import annotations

import json
import os
import subprocess
import sys

QUIET_ENV = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (VmRSS) or its peak (VmHWM), in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def print_result(result: dict) -> None:
    """The child's side: the one line run_child reads."""
    print("RESULT " + json.dumps(result), flush=True)


def run_child(script: str, spec: dict, log, what: str, env: dict | None = None) -> tuple[dict, float]:
    """Run `script --child SPEC`; its result and its whole-process peak RSS in MB (from the kernel, wait4)."""
    proc = subprocess.Popen([sys.executable, os.path.abspath(script), "--child", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=log, env={**os.environ, **QUIET_ENV, **(env or {})},
                            text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if code != 0 or not lines:
        raise SystemExit(f"error: {what} failed (exit {code}); see {log.name}")
    return json.loads(lines[-1][len("RESULT "):]), usage.ru_maxrss / 1024  # ru_maxrss is in KiB on Linux
