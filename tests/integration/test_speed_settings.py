"""The GPU-side defaults, checked on the CPU (issue 11): what each setting does is observable without a GPU.

- compile uses static shapes: a new batch size gets a graph of its own, the batch dimension never turns symbolic;
- DDP gets small buckets, gradient views, a static graph and no per-forward buffer broadcast (real gloo processes);
- cudnn.benchmark follows its setting; the stop check runs every k steps; benchmark runs can skip checkpoint and
  best-model writes.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet_lite.config import resolve_config
from resnet_lite.outputs.checkpoint import list_checkpoints
from resnet_lite.outputs.rundir import claimed
from resnet_lite.train import train
from resnet_lite.training.distributed import accelerator_session
from resnet_lite.training.signals import Preempted, StopFlag
from resnet_lite.training.trainer import Trainer

BIN = Path(sys.executable).parent
TINY = ["data.spec=synthetic", "data.synthetic_train=256", "data.synthetic_test=64", "data.image_size=8",
        "batch_size=32", "eval_batch_size=64", "epochs=2", "wandb=disabled"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    return dict(env, WANDB_MODE="disabled", OMP_NUM_THREADS="1", **extra)


@pytest.mark.slow
def test_compile_is_static_a_new_eval_batch_size_recompiles_without_a_symbolic_batch(tmp_path):
    """21 test images in batches of 16: the last batch (5) recompiles; with dynamic shapes (torch's default after a
    size change) dynamo would make the batch dimension a symbol (`create_symbol ... L['x'].size()[0]`) instead.
    aot_eager: dynamo's guards and recompiles are the backend's input, the same as inductor's, without minutes of C++
    compilation on a CPU."""
    cmd = [sys.executable, "-m", "resnet_lite.train", *TINY, "data.synthetic_train=64", "data.synthetic_test=21",
           "eval_batch_size=16", "compile=true", "compile_backend=aot_eager", "drop_last=true", "epochs=2",
           "--output-dir", str(tmp_path / "run")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(TORCH_LOGS="recompiles,dynamic"), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    assert "size mismatch at index 0. expected 16, actual 5" in log  # the eval's last batch: a graph of its own
    symbols = [line for line in log.splitlines() if "create_symbol" in line and "size()" in line]
    assert not symbols, symbols[:3]
    recompiles = log.count("Recompiling function")
    assert recompiles <= 2, log[-3000:]  # no grad (evaluation) and the batch of 5; nothing per epoch


@pytest.mark.slow
def test_ddp_gets_its_settings_in_two_gloo_processes(tmp_path):
    """Defaults (static graph, 4 MiB buckets, gradient views, no buffer broadcast) and overrides reach torch's
    DistributedDataParallel; with grad_accum's no_sync micro-batches the static graph is off (torch's cannot begin
    under no_sync: an internal assert in its reducer)."""
    report = tmp_path / "ranks"
    settings = {"defaults": [], "overrides": ["grad_accum=2", "ddp.bucket_cap_mb=0.5", "ddp.broadcast_buffers=true",
                                              "ddp.gradient_as_bucket_view=false"]}
    for name, extra in settings.items():
        cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "resnet_lite.train", *TINY,
               "epochs=1", *extra, "--output-dir", str(tmp_path / name)]
        proc = subprocess.run(cmd, cwd=tmp_path, env=_env(ACCELERATE_USE_CPU="true",
                              RESNET_LITE_RANK_REPORT=str(report / name)), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "FutureWarning" not in proc.stderr, proc.stderr[-3000:]  # torch's for broadcast_buffers, per process
    default, changed = (json.loads((report / name / "rank1.json").read_text())["ddp"] for name in settings)
    assert default == {"static_graph": True, "bucket_bytes_cap": 4 * 2**20, "broadcast_buffers": False,
                       "gradient_as_bucket_view": True}
    assert changed == {"static_graph": False, "bucket_bytes_cap": 2**19, "broadcast_buffers": True,
                       "gradient_as_bucket_view": False}


@pytest.mark.slow
def test_a_compiled_cpu_run_says_nothing_of_cuda(tmp_path):
    """inductor's CPU code generation imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on any
    machine with a CUDA toolkit and no GPU (CUDA_HOME set here). The eager backend compiles without inductor, so the
    import comes after the run, as inductor's would during it."""
    code = (f"from resnet_lite.train import main; main({[*TINY, 'epochs=1', 'compile=true', 'compile_backend=eager']!r}"
            f" + ['--output-dir', {str(tmp_path / 'run')!r}]); import torch.utils.cpp_extension")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(CUDA_HOME=str(tmp_path)),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CUDA" not in proc.stderr + proc.stdout, proc.stderr[-3000:]


def test_cudnn_benchmark_follows_the_setting(tmp_path):
    before = torch.backends.cudnn.benchmark
    try:
        for value in (False, True):
            train(resolve_config(overrides=[*TINY, "epochs=1", f"cudnn_benchmark={str(value).lower()}",
                                            f"output_dir={tmp_path / str(value)}"]))
            assert torch.backends.cudnn.benchmark is value
    finally:
        torch.backends.cudnn.benchmark = before


@pytest.mark.parametrize("every, stopped_after", [(1, 2), (3, 6)])
def test_stop_check_runs_every_k_steps(every, stopped_after, tmp_path):
    """A signal already received: the first check posts it, the next check reads it and the run stops there; with
    checks every 3 steps that is after step 6 instead of step 2 (8 steps per epoch: no epoch end in between)."""
    cfg = resolve_config(overrides=[*TINY, f"stop_check_every={every}", f"output_dir={tmp_path / 'run'}"])
    with accelerator_session() as accelerator, claimed(cfg.output_dir, "run", accelerator) as run_dir:
        trainer = Trainer(cfg, accelerator, run_dir, stop_flag=StopFlag(signum=signal.SIGTERM))
        with pytest.raises(Preempted, match=f"stopped by SIGTERM after step {stopped_after} "):
            trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == [f"step-{stopped_after:08d}.pt"]


def test_benchmark_runs_can_skip_epoch_checkpoints_and_best_weights(tmp_path):
    """checkpoint_every_epochs=0 save_best=false: the last epoch's checkpoint and model_last only; every 2 epochs:
    epochs 2 and 3 (the last)."""
    train(resolve_config(overrides=[*TINY, "epochs=3", "checkpoint_every_epochs=0", "save_best=false",
                                    f"output_dir={tmp_path / 'none'}"]))
    assert [p.name for p in list_checkpoints(tmp_path / "none" / "checkpoints")] == ["step-00000024.pt"]
    assert not (tmp_path / "none" / "model_best.safetensors").exists()
    assert (tmp_path / "none" / "model_last.safetensors").is_file()
    train(resolve_config(overrides=[*TINY, "epochs=3", "checkpoint_every_epochs=2", "keep_checkpoints=5",
                                    f"output_dir={tmp_path / 'two'}"]))
    assert [p.name for p in list_checkpoints(tmp_path / "two" / "checkpoints")] == ["step-00000016.pt",
                                                                                      "step-00000024.pt"]
    assert (tmp_path / "two" / "model_best.safetensors").is_file()
