"""What both halves of the fast recipe's tests use (tests/unit/test_fast.py, tests/integration/test_fast.py)."""
import json
from pathlib import Path

TINY = ["data.spec=synthetic", "data.synthetic_train=256", "data.synthetic_test=64", "data.image_size=8",
        "batch_size=64", "eval_batch_size=64", "epochs=2", "compile=false", "wandb=disabled"]
FAST_PRESETS = ["fast", "fast94"]


def rows_of(out):
    """The metrics rows of run directory `out`, one dict per epoch."""
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
