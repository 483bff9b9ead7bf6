"""Published weights: the in-process checks (nothing trained, no process started). The rest, and what the file tests
and why: tests/integration/test_published_weights.py."""
import sys

import pytest

from resnet_lite.errors import UserError
from resnet_lite.models.lite import create_model, published_weights

from support import REPO

sys.path.insert(0, str(REPO / "benchmarks"))


def test_without_published_weights_pretrained_is_a_one_line_error():
    if published_weights("lite_r4b2"):
        pytest.skip("lite_r4b2 has published weights: test_the_published_weights_reproduce_their_accuracy checks them")
    with pytest.raises(UserError, match="^no pretrained weights are published for lite_r4b2; "):
        create_model("lite_r4b2", pretrained=True)
