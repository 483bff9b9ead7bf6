"""Training a model: the Trainer (trainer) builds a run and drives its loops (engine) on one or many processes
(distributed), with the optimizer and learning-rate schedule (optim), an average of the weights (ema), stopping on
signals or a non-finite loss (signals), and what a checkpoint holds (state).
"""

_EXPORTS = {  # name -> the module that defines it
    "Trainer": "trainer",
    "evaluate_loader": "engine", "train_one_epoch": "engine",
    "DDPConfig": "distributed", "accelerator_session": "distributed", "resolve_mixed_precision": "distributed",
    "average_bn_stats": "distributed",
    "OptimConfig": "optim", "ScheduleConfig": "optim", "build_optimizer": "optim", "build_scheduler": "optim",
    "EMAConfig": "ema",
    "Preempted": "signals", "NonFiniteLoss": "signals",
}
__all__ = list(_EXPORTS)


def __getattr__(name):  # the names above, imported when first asked for: no import cycles between the subpackages
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
