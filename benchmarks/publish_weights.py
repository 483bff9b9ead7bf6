"""Publish weights a GPU run brought back as the package's pretrained weights (timm's pretrained_cfg, offline).

    python benchmarks/publish_weights.py ../gpu_run_call1/lite_r4b2.fast94.safetensors \
        --data imagefolder:/work/data/cifar10-jpeg/cifar10-jpeg

reads the weights (resnet_lite.train's safetensors: model, classes, mean and std in its metadata) and the JSON beside
them (lite_r4b2.fast94.json, written by benchmarks/gpu_summary.py: seed, final test accuracy, TTA level, precision,
data, archive hash, commit, hardware...), evaluates them here on the CPU in fp32 over the same data's test split with
the recorded TTA level (resnet_lite.evaluate), refuses when that is more than --tolerance points from the recorded
accuracy (a GPU's bf16 and this CPU's fp32 round near-ties differently: a few images, not more), then

- copies them to resnet_lite/models/weights/<model>.<tag>.safetensors (tag: <preset>_c10jpeg by default), and
- adds their entry to resnet_lite/models/weights/published.json: the file, its sha256, the hf_hub_id a Hub copy would
  take (resnet-lite/<model>.<tag>), classes, mean/std, input size, the accuracy recorded on the GPU and the one measured
  here (test_acc_cpu_fp32: what tests/integration/test_published_weights.py reproduces), and what data, recipe and
  commit.

resnet_lite.models reads published.json at import: the entry becomes a pretrained tag of its model, the model's
default, so `create_model("lite_r4b2", pretrained=True)` loads the file from the installed package (pyproject.toml's
package-data includes weights/). Then commit the two files, run `pytest tests -k published_weights`, and fix the
tests that expect "no pretrained weights are published" for that model (tests/integration/test_finetune.py,
tests/unit/test_published_weights.py).
"""
import argparse
import datetime
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / "resnet_lite" / "models" / "weights"
REGISTRY = "published.json"
HUB_ORG = "resnet-lite"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_weights(path: Path) -> dict:
    """The file's own metadata, after checking that its tensors load into its model exactly (strict)."""
    from resnet_lite.models.lite import create_model
    from resnet_lite.outputs.weights import load_weights

    state_dict, meta = load_weights(path)
    model = create_model(meta["model"], num_classes=meta["num_classes"], in_chans=meta.get("in_chans", 3))
    model.load_state_dict(state_dict)  # strict: every key, every shape
    return meta


def evaluate_here(path: Path, spec: str, tta: int, data_dir=None) -> dict:
    """resnet_lite.evaluate on this machine's CPU in fp32: {acc, samples}."""
    from resnet_lite.evaluate import evaluate

    with tempfile.TemporaryDirectory() as out:
        report = evaluate(path, data=spec, split="test", tta=tta, mixed_precision="no", output=out, data_dir=data_dir)
    return {"acc": report["acc"], "samples": report["samples"]}


def entry_for(meta: dict, file_meta: dict, file_name: str, sha256: str, tag: str, hub_id: str, measured) -> dict:
    """published.json's entry: what resnet_lite.models turns into timm's pretrained_cfg, and the record behind it."""
    size = file_meta.get("image_size") or 32
    acc = f"{100 * meta['test_acc']:.2f}%"
    data = (f"CIFAR-10-JPEG ({meta.get('archive') or 'archive'}, sha256 {meta.get('archive_sha256', '?')[:12]}...): "
            f"{meta.get('train_images')} train / {meta.get('test_images')} test images")
    recipe = (f"{meta['preset']} (configs/{meta['preset']}.yaml), seed {meta['seed']}, {meta['epochs']} epochs, "
              f"{meta.get('mixed_precision')}, compile {meta.get('compile')}; the best of {meta.get('seeds_compared')} "
              f"seeds by final test accuracy")
    notes = [f"data: {data}", f"recipe: {recipe}", f"commit: {meta.get('commit')}",
             f"test accuracy: {acc} (final epoch, TTA {meta.get('tta')}, EMA {meta.get('ema')}, "
             f"{meta.get('mixed_precision')}, on {meta.get('hardware')}, torch {meta.get('torch')}, "
             f"{meta.get('date')})"]
    if measured:
        notes.append(f"test accuracy here: {100 * measured['acc']:.2f}% (CPU, fp32, TTA {meta.get('tta')}, "
                     f"resnet_lite.evaluate, {measured['samples']} images)")
    return {
        "architecture": meta["model"], "tag": tag, "file": file_name, "sha256": sha256, "hf_hub_id": hub_id,
        "num_classes": file_meta["num_classes"], "label_names": list(file_meta["classes"]),
        "mean": list(file_meta["mean"]), "std": list(file_meta["std"]),
        "input_size": [file_meta.get("in_chans", 3), size, size],
        "test_acc": meta["test_acc"], "test_images": meta.get("test_images"), "tta": meta.get("tta"),
        "mixed_precision": meta.get("mixed_precision"),
        "test_acc_cpu_fp32": measured["acc"] if measured else None,
        "data": data, "archive_sha256": meta.get("archive_sha256"), "recipe": recipe, "preset": meta["preset"],
        "seed": meta["seed"], "commit": meta.get("commit"),
        "trained_on": f"{meta.get('hardware')}, torch {meta.get('torch')}",
        "date": meta.get("date"), "published": str(datetime.date.today()),
        "description": f"{meta['model']} trained with the {meta['preset']} recipe on CIFAR-10-JPEG: "
                       f"{acc} test accuracy",
        "notes": notes,
    }


def publish(weights: Path, meta: dict, dest: Path, tag: str, hub_id: str, measured) -> Path:
    """Copy `weights` into `dest` and add (or replace) its entry in dest/published.json; returns the copy."""
    file_meta = check_weights(weights)
    if file_meta["model"] != meta["model"]:
        raise SystemExit(f"error: {weights} holds {file_meta['model']} but its JSON says {meta['model']}")
    if meta.get("sha256") and _sha256(weights) != meta["sha256"]:
        raise SystemExit(f"error: {weights} is not the file its JSON describes (sha256 differs)")
    dest.mkdir(parents=True, exist_ok=True)
    name = f"{meta['model']}.{tag}"
    target = dest / f"{name}.safetensors"
    shutil.copyfile(weights, target)
    registry_path = dest / REGISTRY
    registry = json.loads(registry_path.read_text()) if registry_path.is_file() else {}
    registry[name] = entry_for(meta, file_meta, target.name, _sha256(target), tag, hub_id, measured)
    registry_path.write_text(json.dumps(registry, indent=2) + "\n")
    return target


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", type=Path, help="the .safetensors a GPU run brought back (lite_r4b2.fast94.safetensors)")
    p.add_argument("--meta", type=Path, help="its JSON (default: beside it, same name, .json)")
    p.add_argument("--data", help="the same data's spec, imagefolder:PATH (its test split is evaluated here)")
    p.add_argument("--data-dir", help="where decoded data is cached (data.root)")
    p.add_argument("--no-evaluate", action="store_true", help="publish without evaluating here (not for a release)")
    p.add_argument("--tolerance", type=float, default=0.5,
                   help="points the accuracy measured here may differ from the recorded one (default 0.5)")
    p.add_argument("--tag", help="timm's pretrained tag (default: <preset>_c10jpeg)")
    p.add_argument("--hub-id", help=f"hf_hub_id a Hub copy would take (default: {HUB_ORG}/<model>.<tag>)")
    p.add_argument("--dest", type=Path, default=DEST, help=f"the package's weights folder (default {DEST})")
    args = p.parse_args(argv)
    meta_path = args.meta or args.weights.with_suffix(".json")
    if not args.weights.is_file() or not meta_path.is_file():
        p.error(f"need {args.weights} and {meta_path}")
    meta = json.loads(meta_path.read_text())
    tag = args.tag or f"{meta['preset']}_c10jpeg"
    hub_id = args.hub_id or f"{HUB_ORG}/{meta['model']}.{tag}"
    measured = None
    if not args.no_evaluate:
        if not args.data:
            p.error("--data imagefolder:PATH (the data the weights were measured on), or --no-evaluate")
        measured = evaluate_here(args.weights, args.data, meta.get("tta") or 0, args.data_dir)
        diff = 100 * abs(measured["acc"] - meta["test_acc"])
        print(f"recorded {100 * meta['test_acc']:.2f}% ({meta.get('test_images')} images); here (CPU, fp32) "
              f"{100 * measured['acc']:.2f}% ({measured['samples']} images): {diff:.2f} points apart")
        if meta.get("test_images") and measured["samples"] != meta["test_images"]:
            raise SystemExit(f"error: {args.data} has {measured['samples']} test images, the weights were measured on "
                             f"{meta['test_images']}: give the same data")
        if diff > args.tolerance:
            raise SystemExit(f"error: {diff:.2f} points from the recorded accuracy (more than --tolerance "
                             f"{args.tolerance}): not published")
    target = publish(args.weights, meta, args.dest, tag, hub_id, measured)
    print(f"published {target} ({target.stat().st_size / 2**20:.1f} MiB) as {meta['model']}.{tag} in "
          f"{args.dest / REGISTRY}; create_model({meta['model']!r}, pretrained=True) loads it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
