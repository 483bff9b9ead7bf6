"""One real training run, made once per test session and shared by the evaluate, predict and export tests.

    from tiny_run import tiny_run          # in a test module; then use the `tiny_run` fixture (a Path)

Synthetic 8x8 images, two epochs: a few seconds on two CPU cores, and a model that has learnt something (about 30%
test accuracy on ten classes) so its predictions are neither uniform nor all correct. 101 test images: an odd count,
so two evaluation processes get shards of different sizes. The run measures its accuracy with flip TTA (tta=1), so
evaluate must use the run's own TTA level to reproduce it.
"""
import json

import pytest

from resnet_lite.train import main as train_main

SETTINGS = ["--data", "synthetic", "--epochs", "2", "--batch-size", "32", "--lr", "0.002", "--wandb", "disabled",
            "data.synthetic_train=512", "data.synthetic_test=101", "data.image_size=8", "eval_batch_size=64", "tta=1"]
TEST_IMAGES = 101


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.getbasetemp() / "tiny_run"
    if not (run / "summary.json").is_file():  # each module imports this fixture; the session's first one trains
        train_main([*SETTINGS, "--output-dir", str(run)])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval_samples"] == TEST_IMAGES
    return run
