"""The data, as it flows to the model: datasets as uint8 tensors (sources: CIFAR through cifar, image folders
through images, synthetic), a loader that keeps a whole split on the device (loader), and batched augmentation with
per-sample randomness on the device (augment).

    from resnet_lite.data import DeviceLoader, build_augment, build_normalize, load_dataset
"""

_EXPORTS = {  # name -> the module that defines it
    "DataConfig": "sources", "Dataset": "sources", "Split": "sources", "SPECS": "sources", "load_data": "sources",
    "load_dataset": "sources", "default_root": "sources",
    "DeviceLoader": "loader",
    "AugmentConfig": "augment", "build_augment": "augment",
    "build_normalize": "images", "decode": "images",
}
__all__ = list(_EXPORTS)


def __getattr__(name):  # the names above, imported when first asked for: no import cycles between the subpackages
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
