"""--data hf:NAME: the training runs and real processes. The rest, and what the file tests and why:
tests/unit/test_hub.py."""
import json

import pytest

from resnet_lite.data.sources import load_dataset
from resnet_lite.errors import UserError
from resnet_lite.outputs.weights import load_weights
from resnet_lite.train import main as train_main

from support.formats import HUB_CLASSES, write_parquet

datasets = pytest.importorskip("datasets")  # the test extra brings it; a plain install has no hf: support
pytestmark = pytest.mark.usefixtures("hub_offline")
CLASSES = HUB_CLASSES


def test_training_on_a_hub_dataset_uses_its_classes(tmp_path):
    write_parquet(tmp_path / "pq", splits=(("train", 64), ("test", 16)), size=(8, 8))
    out = tmp_path / "run"
    assert train_main(["--data", f"hf:{tmp_path / 'pq'}", "--data-dir", str(tmp_path / "root"), "--epochs", "1",
                       "--batch-size", "16", "--output-dir", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "pq" and list(summary["per_class_acc"]) == CLASSES and summary["steps"] == 4
    assert load_weights(out / "model_last.safetensors")[1]["classes"] == CLASSES


def test_unreachable_hub_name_says_how_to_fix_it_on_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        train_main(["--data", "hf:uoft-cs/cifar10", "--output-dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "the Hub cannot be reached" in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("spec, options, message", [
    ("hf:nonexistent-org/no-such-dataset", {}, "--data hf:nonexistent-org/no-such-dataset: "
     "datasets.load_dataset('nonexistent-org/no-such-dataset') failed: Couldn't reach"),
    ("hf:{pq}", {"image_column": "pixels"}, "--data hf:{pq} has no column 'pixels' (columns: img, label); set "
     "data.image_column to one of them"),
    ("hf:{pq}", {"label_column": "lable"}, "--data hf:{pq} has no column 'lable' (did you mean 'label'? columns: "
     "img, label); set data.label_column"),
    ("hf:{pq}:other", {}, "--data hf:{pq}:other: datasets.load_dataset('{pq}', 'other') failed: BuilderConfig "
     "'other' not found"),
    ("hf:", {}, "--data hf: names no dataset; write hf:NAME or hf:NAME:CONFIG"),
])
def test_mistakes_are_one_line_errors(spec, options, message, tmp_path):
    write_parquet(tmp_path / "pq")
    fill = {"pq": tmp_path / "pq"}
    with pytest.raises(UserError) as e:
        load_dataset(spec.format(**fill), root=str(tmp_path / "root"), **options)
    assert str(e.value).startswith(message.format(**fill)) and "\n" not in str(e.value)
