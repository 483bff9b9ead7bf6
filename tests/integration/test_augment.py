"""Batched augmentation: the training runs and real processes. The rest, and what the file tests and why:
tests/unit/test_augment.py."""


import pytest
import torch

from resnet_lite.data import augment as A

MEAN = (0.4914, 0.4821, 0.4465)
STD = (0.2470, 0.2434, 0.2615)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_torch_compile_on_cpu_matches_eager():
    try:
        probe = torch.compile(lambda t: t * 2 + 1)
        probe(torch.ones(2))
    except Exception as e:  # no C++ toolchain for inductor here
        pytest.skip(f"inductor cannot compile on this machine: {type(e).__name__}: {e}")
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=gen())
    fn = A.build_augment("report", MEAN, STD)
    out = torch.compile(fn)(x, gen(3))
    eager = fn(x, gen(3))
    assert out.dtype == torch.float32 and out.shape == x.shape
    # same draws; a fused multiply-add may move a truncation by one grey level on rare pixels
    assert (out - eager).abs().max() < 2 / 255 / min(STD) + 1e-4
    assert (out != eager).float().mean() < 1e-3
