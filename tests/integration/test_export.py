"""export: ONNX (checked with onnxruntime, dynamic batch), TorchScript (reloaded), and a timm folder timm can load."""
import importlib
import json

import numpy as np
import pytest
import timm
import torch

from resnet_lite.errors import UserError
from resnet_lite.export import export, main
from resnet_lite.outputs.runs import load_run
from resnet_lite.predict import predict

CLASSES = [f"class{i}" for i in range(10)]


def _importable(*names):
    try:
        for name in names:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


HAS_ONNX = _importable("onnx", "onnxruntime")


def _images(batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, 8, 8), dtype=torch.uint8, generator=g)


def _reference(run, images):
    with torch.no_grad():
        return run.model(run.normalize(images))


@pytest.mark.skipif(not HAS_ONNX,
                    reason="onnx/onnxruntime absent: the optional extra resnet_lite[export] is not installed")
@pytest.mark.parametrize("dynamo", [
    pytest.param(True, id="torch.export", marks=pytest.mark.skipif(
        not _importable("onnxscript"), reason="onnxscript (torch's torch.export-based exporter) absent")),
    pytest.param(False, id="torchscript-based")])
def test_onnx_matches_pytorch_at_any_batch_size(tiny_run, tmp_path, dynamo):
    import onnx
    import onnxruntime as ort

    from resnet_lite.export import export_onnx

    run = load_run(tiny_run)
    path = tmp_path / "m.onnx"
    export_onnx(run, path, dynamo=dynamo)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 8, 8]  # batch is symbolic
    for batch in (1, 7):
        images = _images(batch)
        got = session.run(["logits"], {"image": run.normalize(images).numpy()})[0]
        np.testing.assert_allclose(got, _reference(run, images).numpy(), rtol=1e-4, atol=1e-4)
    props = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props if p.key in ("classes", "mean")}
    assert props == {"classes": CLASSES, "mean": run.meta["mean"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # one file, no temporaries left


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_round_trip(tiny_run, tmp_path, capsys):
    assert main([str(tiny_run), "--format", "torchscript", "--output", str(tmp_path / "m.pt")]) == 0
    assert "outputs match PyTorch's" in capsys.readouterr().out
    extra = {"resnet_lite.json": ""}
    loaded = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    run = load_run(tiny_run)
    images = _images(5)
    torch.testing.assert_close(loaded(run.normalize(images)), _reference(run, images))
    assert json.loads(extra["resnet_lite.json"])["classes"] == CLASSES


def test_timm_folder_loads_with_timm(tiny_run, tmp_path):
    folder, _ = export(tiny_run, "safetensors", tmp_path / "export")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    run = load_run(tiny_run)
    assert cfg["architecture"] == "lite_r4b2" and cfg["num_classes"] == 10 and cfg["num_features"] == 256
    assert cfg["label_names"] == CLASSES
    pre = cfg["pretrained_cfg"]
    assert pre["input_size"] == [3, 8, 8] and pre["mean"] == run.meta["mean"] and pre["std"] == run.meta["std"]

    images = _images(4)
    # timm's checkpoint loader reads the weights file ...
    model = timm.create_model("lite_r4b2", num_classes=10, checkpoint_path=str(folder / "model.safetensors")).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(run.normalize(images)), _reference(run, images))
    # ... and its data config follows the folder's pretrained_cfg
    from timm.models._hub import load_model_config_from_path

    pretrained_cfg, name, _ = load_model_config_from_path(folder)
    assert name == "lite_r4b2" and pretrained_cfg["label_names"] == CLASSES
    # the folder is also what this package reads back: predict on the export, as on the run
    (tmp_path / "img").mkdir()
    from PIL import Image
    Image.fromarray(images[0].permute(1, 2, 0).numpy()).save(tmp_path / "img" / "x.png")
    assert predict(load_run(folder), [tmp_path / "img"], tta=0) == predict(run, [tmp_path / "img"], tta=0)


def test_timm_create_model_local_dir_pretrained(tiny_run, tmp_path):
    """The way timm users load a folder: timm.create_model("local-dir:PATH", pretrained=True)."""
    folder, _ = export(tiny_run, "safetensors", tmp_path / "export")
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    run = load_run(tiny_run)
    images = _images(3)
    with torch.no_grad():
        torch.testing.assert_close(model(run.normalize(images)), _reference(run, images))
    data_cfg = timm.data.resolve_data_config(model=model)
    assert data_cfg["input_size"] == (3, 8, 8) and list(data_cfg["mean"]) == run.meta["mean"]
    assert model.pretrained_cfg["label_names"] == CLASSES


def test_export_refuses_to_overwrite_a_foreign_folder(tiny_run, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="is not an earlier export"):
        export(tiny_run, "safetensors", tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    export(tiny_run, "safetensors", tmp_path / "again")
    with pytest.raises(UserError, match="exists; pass --overwrite to replace it"):
        export(tiny_run, "safetensors", tmp_path / "again")
    export(tiny_run, "safetensors", tmp_path / "again", overwrite=True)  # an earlier export is replaced when asked
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "mine"]  # no temporary folders left


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_never_replaces_a_file_unasked(fmt, tiny_run, tmp_path, capsys):
    """A typo in --output (the run's own model_last.safetensors) must not destroy it."""
    target = tiny_run / "model_last.safetensors"
    before = target.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main([str(tiny_run), "--format", fmt, "--output", str(target)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err == f"error: {target} exists; pass --overwrite to replace it, or choose " \
                                                 f"another --output\n"
    assert target.read_bytes() == before


@pytest.mark.parametrize("argv, message", [
    (["RUN", "--format", "tflite", "--output", "x"], "invalid choice: 'tflite'"),
    (["RUN", "--format", "onnx"], "--output"),
    (["MISSING", "--format", "onnx", "--output", "x"], "does not exist"),
])
def test_bad_arguments_are_one_line(tiny_run, tmp_path, capsys, argv, message):
    argv = [str(tiny_run) if a == "RUN" else str(tmp_path / "missing") if a == "MISSING" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err
