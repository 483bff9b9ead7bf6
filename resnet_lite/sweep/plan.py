"""A sweep's plan: which runs, with which settings, in which folders."""
import itertools
import re
from dataclasses import dataclass

from ..errors import UserError
from ..report import REPORT_TABLE

__all__ = ["PlannedRun", "plan_runs", "REPORT_PRESETS"]

REPORT_PRESETS = [f"model{r['model']}" for r in REPORT_TABLE]  # the default study: the report's Table 1
@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its folder under OUTPUT_DIR, its preset, and its own settings ((key, value text), ...)."""
    name: str
    preset: str
    settings: tuple = ()

    @property
    def overrides(self) -> list[str]:
        return [f"{key}={value}" for key, value in self.settings]


def _values(text: str) -> list[str]:
    """'0.1,0.01' -> ['0.1', '0.01']; a comma inside [...] or {...} (a YAML list or mapping) does not split."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += (ch in "[{") - (ch in "]}")
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    return [*values, current]


def plan_runs(presets, overrides, seeds: int | None = None) -> tuple[list[PlannedRun], list[str], list[str]]:
    """(runs, overrides shared by all, the grid's keys): every preset with every combination of the KEY=V1,V2,...
    values (and seed=0..seeds-1), named by the values that differ (`lr0.01-seed0`)."""
    shared: list[str] = []
    axes: list[tuple[str, list[str]]] = []  # (key, its values)
    for override in overrides:
        key, _, value = override.partition("=")
        key, values = key.strip(), _values(value)
        if key == "output_dir":
            raise UserError(f"{override} would put every run of the sweep in one folder; each run gets its own under "
                            "--output-dir, the sweep's folder (default runs/sweep): set that instead")
        if len(values) == 1:
            shared.append(override)
        elif "" in values:
            raise UserError(f"{override} has an empty value; list them as {key}=V1,V2")
        elif key in dict(axes):
            raise UserError(f"{key} is given two lists of values; give it one, e.g. {key}={','.join(values)}")
        else:
            axes.append((key, values))
    if seeds is not None:
        if seeds < 1:
            raise UserError(f"--seeds {seeds} must be >= 1")
        if "seed" in dict(axes) or any(o.partition("=")[0].strip() == "seed" for o in shared):
            raise UserError("--seeds and a seed= setting both choose the seeds; keep one")
        axes.append(("seed", [str(i) for i in range(seeds)]))
    keys = [key for key, _ in axes]
    leaves = [key.rsplit(".", 1)[-1] for key in keys]
    short = {key: leaf if leaves.count(leaf) == 1 else key for key, leaf in zip(keys, leaves, strict=True)}
    runs = []
    for preset in presets:
        for combo in itertools.product(*(values for _, values in axes)):
            settings = tuple(zip(keys, combo, strict=True))
            parts = [preset] if len(presets) > 1 or not axes else []
            parts += [short[key] + re.sub(r"[^\w.+-]", "_", value) for key, value in settings]
            runs.append(PlannedRun("-".join(parts), preset, settings))
    names = [run.name for run in runs]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice:
        raise UserError(f"two runs of the grid would share the folder {twice}; give values that differ in letters "
                        "or digits")
    return runs, shared, keys


def _as_run(run) -> PlannedRun:
    return run if isinstance(run, PlannedRun) else PlannedRun(run, run)
