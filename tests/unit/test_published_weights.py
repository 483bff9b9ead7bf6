"""Published weights (issue 21): what a GPU run brings back becomes package data that
`create_model("lite_r4b2", pretrained=True)` loads offline, and `evaluate` reproduces the accuracy they record.

The mechanism is proven end to end on weights a tiny real training run makes here (never a committed file): the fast
stage's benchmark trains, gpu_summary.py exports its best fast94 seed as gpu_run.sh does, publish_weights.py installs
it into a fresh copy of the checkout, and a separate Python there loads and evaluates it, and builds the wheel.
While nothing is published, pretrained=True stays a one-line error; once something is, its accuracy is checked on the
shared archive.
"""
import sys

import pytest

from resnet_lite.errors import UserError
from resnet_lite.models.lite import create_model, published_weights

from support import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

PROBE = """
import json, sys, torch
from resnet_lite.outputs.weights import load_weights
from resnet_lite.evaluate import evaluate
from resnet_lite.models import create_model, published_weights
from resnet_lite.models.pretrained import initial_model
model = create_model("lite_r4b2", pretrained=True)
(name, entry), = published_weights("lite_r4b2").items()
state, _ = load_weights(entry["path"])
same = all(torch.equal(state[k], v) for k, v in model.state_dict().items())
five = create_model("lite_r4b2", pretrained=True, num_classes=5)
_, origin = initial_model("lite_r4b2", 10, pretrained=True)
report = evaluate(entry["path"], data=sys.argv[1], tta=entry["tta"], mixed_precision="no", data_dir=sys.argv[2],
                  output=sys.argv[3])
cfg = model.pretrained_cfg
print(json.dumps(dict(name=name, entry=entry, same=same, five=five.fc.out_features, origin=origin, acc=report["acc"],
                      samples=report["samples"], tag=cfg["tag"], hf_hub_id=cfg["hf_hub_id"], file=cfg["file"],
                      notes=list(cfg["notes"]), mean=list(cfg["mean"]))))
"""


def test_without_published_weights_pretrained_is_a_one_line_error():
    if published_weights("lite_r4b2"):
        pytest.skip("lite_r4b2 has published weights: test_the_published_weights_reproduce_their_accuracy checks them")
    with pytest.raises(UserError, match="^no pretrained weights are published for lite_r4b2; "):
        create_model("lite_r4b2", pretrained=True)
