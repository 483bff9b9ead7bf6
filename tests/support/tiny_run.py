"""One real training run, made once per test session and shared by the evaluate, predict and export tests.

    def test_something(tiny_run): ...     # the fixture (a Path: the run directory) is in tests/conftest.py

Synthetic 8x8 images, two epochs: a few seconds on two CPU cores, and a model that has learnt something (about 30%
test accuracy on ten classes) so its predictions are neither uniform nor all correct. 101 test images: an odd count,
so two evaluation processes get shards of different sizes. The run measures its accuracy with flip TTA (tta=1), so
evaluate must use the run's own TTA level to reproduce it.
"""

SETTINGS = ["--data", "synthetic", "--epochs", "2", "--batch-size", "32", "--lr", "0.002", "--wandb", "disabled",
            "data.synthetic_train=512", "data.synthetic_test=101", "data.image_size=8", "eval_batch_size=64", "tta=1"]
TEST_IMAGES = 101
