"""Test hooks, set from the environment and inert without it: the tests use them to crash runs anywhere and to see
what each process of a multi-process run saw. Nothing here runs per step unless its variable is set.

    RESNET_LITE_TEST_CRASH=step:N | save:N | saved:N   SIGKILL (as the OOM killer or a lost node would) right after
        optimizer step N, inside the write of checkpoint step-N (its bytes in the temporary file, not yet renamed), or
        just after that checkpoint is complete
    RESNET_LITE_TEST_CRASH=usr1:N   every process sends itself SIGUSR1 right after optimizer step N (a Slurm warning
        landing on every process at a chosen step)
    RESNET_LITE_RANK_REPORT=DIR   every process writes DIR/rank<R>.json at the end or when stopped by a signal: its
        data shard, step and a hash of its weights
"""
import hashlib
import json
import os
import signal
from pathlib import Path

import torch

__all__ = ["crash_point", "step_hook", "rank_report"]


def crash_point(where: str, step: int) -> None:
    if os.environ.get("RESNET_LITE_TEST_CRASH") == f"{where}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def step_hook():
    """A callable(step) for the training loop's after-step hook when RESNET_LITE_TEST_CRASH asks for a step; else
    None."""
    value = os.environ.get("RESNET_LITE_TEST_CRASH", "")
    if value.startswith("step:"):
        return lambda step: crash_point("step", step)
    if value.startswith("usr1:"):
        at = int(value.split(":", 1)[1])
        return lambda step: os.kill(os.getpid(), signal.SIGUSR1) if step == at else None
    return None


def _state_hash(state_dict: dict) -> str:
    h = hashlib.sha256()
    for k, v in state_dict.items():
        h.update(k.encode())
        h.update(v.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _ddp_settings(wrapped) -> dict | None:
    """The DistributedDataParallel settings in force for what the steps call (under torch.compile or not)."""
    ddp = getattr(wrapped, "_orig_mod", wrapped)
    if not isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
        return None
    return {"static_graph": ddp.static_graph, "bucket_bytes_cap": ddp.bucket_bytes_cap,
            "broadcast_buffers": ddp.broadcast_buffers, "gradient_as_bucket_view": ddp.gradient_as_bucket_view}


def rank_report(rank: int, world_size: int, step: int, model, train_indices, test_loader, wrapped=None,
                **extra) -> None:
    """With RESNET_LITE_RANK_REPORT=DIR: DIR/rank<rank>.json (the process's step, weights hash, data shards and DDP
    settings)."""
    if not os.environ.get("RESNET_LITE_RANK_REPORT"):
        return
    report = Path(os.environ["RESNET_LITE_RANK_REPORT"])
    report.mkdir(parents=True, exist_ok=True)
    (report / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world_size": world_size, "step": step, "state_sha256": _state_hash(model.state_dict()),
        "train_indices_first_epoch": train_indices.tolist() if train_indices is not None else [],
        "test_indices": test_loader.local_indices().tolist(), "test_samples": test_loader.num_samples,
        "ddp": _ddp_settings(wrapped), **extra}))
