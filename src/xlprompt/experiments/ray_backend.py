"""`--backend ray`: the runner's `execute_run` as Ray tasks, on a local Ray or an existing cluster.

Nothing about the store changes: every task writes into the shared store directory exactly as a local
worker does (locks, done.json last), so a Ray sweep can be killed and resumed with either backend.
On a cluster the store path must be the same shared filesystem on every node, and every node needs
xlprompt installed (see README, "Sweeps").
"""
from __future__ import annotations

import os
from concurrent.futures import Future

from ..core.errors import XlpromptError
from ..execution.inference import available_cores

# environment a worker needs to see what the driver sees (data, model cache, offline mode)
FORWARDED_ENV = ("XLPROMPT_DATA", "XLPROMPT_CACHE", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _import_ray():
    try:
        import ray
    except ImportError:
        raise XlpromptError("--backend ray needs Ray: `pip install 'xlprompt[ray]'` (or `pip install ray`), "
                            "or use --backend local.") from None
    return ray


class RayBackend:
    """Submits runs as Ray tasks; `capacity` runs are in flight so progress shows what really runs."""

    def __init__(self, execute_run, address: str | None = None, workers: int | None = None,
                 num_cpus: float | None = None, num_gpus: float | None = None, device=None, dtype=None):
        """`execute_run`: the runner's function each task runs (passed in, so this module never imports the
        runner that imports it)."""
        ray = _import_ray()
        self._ray = ray
        self._started_here = False
        if not ray.is_initialized():
            env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
            env.setdefault("TOKENIZERS_PARALLELISM", "false")
            kwargs = dict(address=address, include_dashboard=False, log_to_driver=False,
                          runtime_env={"env_vars": env})
            if address is None:  # a local Ray sized to this machine (an existing cluster sizes itself)
                kwargs["num_cpus"] = available_cores()
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise XlpromptError(f"Cannot reach a Ray cluster at {address!r}: {exc}. Start one with "
                                    "`ray start --head` or drop --address for a local Ray.") from None
            self._started_here = True
        cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
        self.num_cpus = float(num_cpus) if num_cpus else 1.0
        # torch threads per task = the CPUs Ray reserved for it, so tasks do not oversubscribe a node
        self.threads = max(1, int(self.num_cpus))
        # --num-gpus: GPUs per run; Ray then sets each task's CUDA_VISIBLE_DEVICES to the GPUs it reserved
        self.num_gpus = float(num_gpus) if num_gpus else 0.0
        if self.num_gpus and not ray.cluster_resources().get("GPU"):
            raise XlpromptError(f"--num-gpus {num_gpus}: the Ray cluster has no GPUs; drop --num-gpus or start "
                                "Ray on machines with GPUs.")
        slots = cluster_cpus // self.num_cpus
        if self.num_gpus:
            slots = min(slots, ray.cluster_resources()["GPU"] // self.num_gpus)
        self.capacity = workers if workers else max(1, int(slots))
        self.device, self.dtype = device, dtype
        # one retry: a task lost with its worker or node is safe to rerun (its lock is stale by then)
        self._remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=1)(execute_run)

    def submit(self, spec_dict: dict, store_dir: str) -> Future:
        return self._remote.remote(spec_dict, os.path.abspath(store_dir), self.threads, self.device,
                                   self.dtype).future()

    def restart(self) -> None:
        pass

    def close(self) -> None:
        if self._started_here:
            self._ray.shutdown()
