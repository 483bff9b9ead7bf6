"""What a run leaves and who reads it: the run directory's layout and rules (rundir), files written whole
(files), checkpoints (checkpoint) and weights files (weights), figures (plots), the console (console) and Weights &
Biases (tracking) while it trains, and a finished run's model for evaluate, predict and export (runs).
"""

_EXPORTS = {  # name -> the module that defines it
    "claim": "rundir", "claimed": "rundir",
    "load_checkpoint": "checkpoint", "list_checkpoints": "checkpoint", "resumable_checkpoint": "checkpoint",
    "load_weights": "weights", "save_weights": "weights",
    "TrainedModel": "runs", "load_run": "runs",
}
__all__ = list(_EXPORTS)


def __getattr__(name):  # the names above, imported when first asked for: no import cycles between the subpackages
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
