"""--profile N: a torch.profiler trace of N training steps after the warm-up, per process, read back as Chrome's trace
format and as the operator table; the run with it ends with the weights of the run without it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnet_lite.outputs.weights import load_weights
from resnet_lite.train import main
from resnet_lite.training.profiling import WAIT, WARMUP

BIN = Path(sys.executable).parent
TINY = ["--data", "synthetic", "--batch-size", "32", "--epochs", "3", "--wandb", "disabled", "data.synthetic_train=128",
        "data.synthetic_test=64", "data.image_size=8", "eval_batch_size=64"]  # 4 steps an epoch, 12 in all


def _trace_steps(path) -> set[str]:
    """The profiler's step annotations in a Chrome trace (which must be one JSON object with events)."""
    events = json.loads(Path(path).read_text())["traceEvents"]
    assert any(e.get("name") == "aten::convolution" for e in events)  # the model's forward was recorded
    assert any(e.get("name", "").startswith("autograd::engine::evaluate_function: ConvolutionBackward") for e in events)
    return {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")}


def test_profile_records_n_steps_after_the_warm_up_and_changes_nothing(tmp_path, capsys):
    main([*TINY, "--output-dir", str(tmp_path / "plain")])
    main([*TINY, "--profile", "3", "--output-dir", str(tmp_path / "profiled")])
    out = capsys.readouterr().out
    first = WAIT + WARMUP + 1
    assert f"profile: steps {first}..{first + 2} in {tmp_path / 'profiled/profile/trace-rank0.json'}" in out
    # the profiler numbers the steps it saw from 0: step k + 1 of the run is its ProfilerStep#k
    assert _trace_steps(tmp_path / "profiled/profile/trace-rank0.json") == {f"ProfilerStep#{k}" for k in (6, 7, 8)}
    table = (tmp_path / "profiled/profile/ops-rank0.txt").read_text()
    assert "Self CPU" in table and "aten::convolution_backward" in table and "# of Calls" in table
    plain, profiled = (load_weights(tmp_path / f"{r}/model_last.safetensors")[0] for r in ("plain", "profiled"))
    assert plain.keys() == profiled.keys() and all(torch.equal(plain[k], profiled[k]) for k in plain)
    assert not (tmp_path / "plain/profile").exists()


def test_a_run_shorter_than_the_window_writes_what_it_recorded(tmp_path, capsys):
    main([*TINY, "--epochs", "2", "--profile", "5", "--output-dir", str(tmp_path / "run")])  # 8 steps: 7 and 8 recorded
    assert "profile: steps 7..8" in capsys.readouterr().out
    # ProfilerStep#8 is what followed the last step (the evaluation), until the run closed the profiler
    assert _trace_steps(tmp_path / "run/profile/trace-rank0.json") == {f"ProfilerStep#{k}" for k in (6, 7, 8)}
    main([*TINY, "--epochs", "1", "--profile", "5", "--output-dir", str(tmp_path / "short")])  # 4 steps: none
    assert "profile: the run ended before a step was recorded" in capsys.readouterr().out
    assert not (tmp_path / "short/profile").exists()


@pytest.mark.slow
def test_two_processes_write_a_trace_each(tmp_path):
    out = tmp_path / "run"
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "resnet_lite.train", *TINY,
           "--batch-size", "64", "data.synthetic_train=256", "--profile", "2", "--output-dir", str(out)]  # 4 steps an
    # epoch of 2 x 32 images
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true", WANDB_MODE="disabled")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("profile: steps 7..8") == 1  # said once, by the main process
    for rank in (0, 1):
        assert _trace_steps(out / f"profile/trace-rank{rank}.json") == {"ProfilerStep#6", "ProfilerStep#7"}
        assert "aten::convolution_backward" in (out / f"profile/ops-rank{rank}.txt").read_text()
