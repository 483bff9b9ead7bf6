"""MixUp and CutMix on the device: the training runs and real processes. The rest, and what the file tests and why:
tests/unit/test_mix.py."""
import os
import subprocess
import sys

import pytest
import torch

from resnet_lite.outputs.weights import load_weights

CLASSES, SMOOTHING = 10, 0.1


@pytest.mark.slow
def test_a_mixing_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path):
    """SIGKILL after step 6 (mid-epoch 2), resume from the step-5 checkpoint: the weights at the end are bitwise those
    of the run that was never stopped (the mixing is drawn from the per-step generator, not saved)."""
    args = ["--data", "synthetic", "--epochs", "3", "--batch-size", "32", "--wandb", "disabled",
            "data.synthetic_train=128", "data.synthetic_test=64", "data.image_size=8", "eval_batch_size=64",
            "augment.mixup_alpha=0.8", "augment.cutmix_alpha=1.0", "augment.mix_prob=0.9", "augment.mix_mode=elem",
            "label_smoothing=0.1", "checkpoint_every_steps=5"]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    env.pop("RESNET_LITE_TEST_CRASH", None)

    def train(out, *extra, **more):
        return subprocess.run([sys.executable, "-m", "resnet_lite.train", *args, "--output-dir", str(out), *extra],
                              env=dict(env, **more), capture_output=True, text=True, timeout=300)

    assert train(tmp_path / "whole").returncode == 0
    assert train(tmp_path / "killed", RESNET_LITE_TEST_CRASH="step:6").returncode == -9
    resumed = train(tmp_path / "killed", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "step 5" in resumed.stdout
    whole, again = (load_weights(tmp_path / f"{r}/model_last.safetensors")[0] for r in ("whole", "killed"))
    assert whole.keys() == again.keys() and all(torch.equal(whole[k], again[k]) for k in whole)
    plain = train(tmp_path / "plain", "augment.mixup_alpha=0", "augment.cutmix_alpha=0")
    assert plain.returncode == 0
    unmixed = load_weights(tmp_path / "plain/model_last.safetensors")[0]
    assert not all(torch.equal(whole[k], unmixed[k]) for k in whole)  # the mixing did change the training
