"""The EMA against the raw weights of one training checkpoint, image by image: each one's accuracy on a split (with the
run's own TTA), the images only one of them gets right, and McNemar's exact test of whether the two differ.

    python benchmarks/ema_vs_raw.py runs/fast                       # the run's newest checkpoint, its test split
    python benchmarks/ema_vs_raw.py runs/holdout --split val        # a data.holdout run's held-out images
    python benchmarks/ema_vs_raw.py runs/fast/checkpoints/step-00002925.pt --tta 0 --json

A difference of a few tenths of a point between two scores on 10,000 images is within their noise; this says
whether it is within the noise of the pair: both weight sets score the same images, so only the images they disagree
on count (BENCHMARKS.md, "Recipes on CPU"). The accuracies match the trainer's test_acc / test_acc_raw for that step.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch

from resnet_lite.data import DeviceLoader, load_data
from resnet_lite.errors import UserError
from resnet_lite.models.tta import TTA
from resnet_lite.outputs.checkpoint import find_checkpoint, load_checkpoint
from resnet_lite.outputs.runs import load_run


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: how likely a split at least this uneven of the disagreeing images is if
    either weight set is as likely as the other to get each of them right (a binomial test at 1/2)."""
    n, k = only_a + only_b, min(only_a, only_b)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


def correct(model, part, normalize, channels_last: bool, batch_size: int) -> torch.Tensor:
    """One bool per image of `part`: whether `model`'s prediction is its label."""
    hits = []
    with torch.inference_mode():
        for images, labels in DeviceLoader(part, batch_size, device=torch.device("cpu"), train=False):
            x = normalize(images)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            hits.append(model(x).argmax(1) == labels)
    return torch.cat(hits)


def compare(path, split: str = "test", tta: int | None = None, batch_size: int = 500) -> dict:
    checkpoint_file = find_checkpoint(path)
    if checkpoint_file is None:
        raise UserError(f"no checkpoint in {path}; give a run directory with checkpoints/ or a step-*.pt file")
    run_dir = checkpoint_file.parent.parent if checkpoint_file.parent.name == "checkpoints" else checkpoint_file.parent
    state = load_checkpoint(checkpoint_file)
    if state.get("ema") is None:
        raise UserError(f"{checkpoint_file} holds no EMA (the run had ema.enabled=false); nothing to compare")
    run = load_run(run_dir)  # model, preprocessing and config; its weights are replaced by the checkpoint's below
    if run.config is None:
        raise UserError(f"{run_dir} has no config.yaml; give a checkpoint inside its run directory")
    part = getattr(load_data(run.config.data), split, None)
    if part is None:
        raise UserError(f"{run.config.data.spec} has no {split} split (val needs a run with data.holdout)")
    tta = run.tta if tta is None else tta
    channels_last = run.config.channels_last
    model = run.model.to(memory_format=torch.channels_last) if channels_last else run.model
    right = {}
    for name in ("model", "ema"):
        model.load_state_dict(state[name])
        right[name] = correct(TTA(model.eval(), tta), part, run.normalize, channels_last, batch_size)
    only_ema, only_raw = int((right["ema"] & ~right["model"]).sum()), int((right["model"] & ~right["ema"]).sum())
    return {"checkpoint": str(checkpoint_file), "step": state["step"], "split": split, "images": len(right["model"]),
            "tta": tta, "acc_raw": right["model"].float().mean().item(), "acc_ema": right["ema"].float().mean().item(),
            "only_ema_right": only_ema, "only_raw_right": only_raw, "mcnemar_p": mcnemar_exact(only_ema, only_raw)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", help="a run directory (its newest checkpoint) or a checkpoints/step-*.pt file")
    p.add_argument("--split", default="test", choices=["test", "val", "train"])
    p.add_argument("--tta", type=int, help="0 none, 1 flip, 2 flip + 1-pixel translate (default: the run's own)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    args = p.parse_args(argv)
    try:
        result = compare(args.path, args.split, args.tta, args.batch_size)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{Path(result['checkpoint'])} (step {result['step']}), {result['split']} split, {result['images']:,} "
          f"images, TTA {result['tta']}")
    print(f"  raw weights {100 * result['acc_raw']:.2f}%   EMA {100 * result['acc_ema']:.2f}%")
    print(f"  only the EMA right: {result['only_ema_right']}   only the raw weights right: "
          f"{result['only_raw_right']}   McNemar exact two-sided p = {result['mcnemar_p']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
