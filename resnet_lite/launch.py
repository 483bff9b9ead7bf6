"""The launch recipes (launch/: Accelerate configs, Slurm scripts, torchrun.sh) as installed with the package.

    python -m resnet_lite.launch                  # every recipe and its path
    python -m resnet_lite.launch cpu              # the path of cpu.yaml
    accelerate launch --config_file "$(python -m resnet_lite.launch multi_gpu)" --num_processes 4 -m resnet_lite.train

A name is an Accelerate config without its .yaml (cpu, single_gpu, multi_gpu, multi_node) or any file's full name.
From a checkout the files are its launch/ folder; after `pip install` the copy inside the package, so the commands
above work from any folder. (The Slurm scripts read launch/*.yaml from the folder they are submitted from, or
from $LAUNCH_DIR.)
"""
import sys

from .cli import ArgumentParser, cli
from .errors import UserError, did_you_mean
from .shipped import shipped

__all__ = ["recipes", "recipe", "main"]


def recipes() -> dict:
    """Name -> path (a Traversable; a Path unless installed in a zip) of every shipped recipe."""
    files = sorted((f for f in shipped("launch_recipes").iterdir()
                    if f.is_file() and not f.name.startswith(("_", "."))),
                   key=lambda f: (not f.name.endswith(".yaml"), f.name))
    return {f.name.removesuffix(".yaml"): f for f in files}


def recipe(name: str):
    """The path of recipe `name` ('cpu' or 'cpu.yaml', 'torchrun.sh', ...), or a UserError listing the names."""
    found = recipes()
    if name.endswith(".yaml"):
        name = name.removesuffix(".yaml")
    if name not in found:
        hint = did_you_mean(name, found)
        hint = f"{hint} " if hint else ""
        raise UserError(f"no launch recipe '{name}'; {hint}(recipes: {', '.join(found)})")
    return found[name]


def build_parser() -> ArgumentParser:
    p = ArgumentParser("python -m resnet_lite.launch", __doc__)
    p.add_argument("name", nargs="?", metavar="NAME", help="a recipe; without it, every recipe and its path")
    return p


@cli
def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.name:
        print(recipe(args.name))
        return 0
    found = recipes()
    width = max(map(len, found))
    for name, path in found.items():
        print(f"{name:<{width}}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
