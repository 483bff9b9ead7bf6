"""resnet_lite: the lightweight ResNets of a CIFAR-10 course report, as a timm model family with a fast trainer.

Importing the package registers `lite_r4b2`, `lite_r4b3` and `lite_r5b2` in timm's model registry.
"""
from .errors import UserError
from .models.lite import LiteResNet, convert_notebook_state_dict, create_model, list_models
from .models.lite import convert_seed_state_dict as convert_seed_state_dict  # the earlier name, kept importable
from .models.tools import count_macs, count_params

__version__ = "0.1.0"
__all__ = ["LiteResNet", "UserError", "convert_notebook_state_dict", "count_macs", "count_params", "create_model",
           "list_models", "__version__"]
