"""The model family, read as a specification: the training runs and real processes. The rest, and what the file tests
and why: tests/unit/test_models.py."""
import subprocess
import sys

import pytest
import timm
import torch

import resnet_lite

MODELS = resnet_lite.list_models("lite_*")
SEED_PARAMS = {"lite_r4b2": 2_799_146, "lite_r4b3": 4_367_786, "lite_r5b2": 4_587_306}


def test_models_table_cli():
    out = subprocess.run([sys.executable, "-m", "resnet_lite.models"], capture_output=True, text=True, check=True)
    for name, params in SEED_PARAMS.items():
        assert name in out.stdout and f"{params:,}" in out.stdout
    assert "140.9M" in out.stdout  # lite_r4b2 MACs per image
    assert "Warning" not in out.stderr


# timm's own model contract, as huggingface/pytorch-image-models tests/test_models.py checks it for every model it
# ships; each test names the timm test it mirrors. Inputs are 2x3x32x32 (the models' default input size).
def _x(batch=2):
    return torch.randn(batch, 3, 32, 32)


@pytest.mark.parametrize("name", MODELS)
def test_model_backward(name):
    """Mirrors timm's test_model_backward: num_classes=42, train mode, a gradient on every parameter."""
    model = timm.create_model(name, pretrained=False, num_classes=42).train()
    out = model(_x())
    out.mean().backward()
    assert out.shape == (2, 42) and not torch.isnan(out).any()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
