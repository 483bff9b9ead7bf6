"""The models: the report's lightweight ResNets, registered in timm's model registry (lite); starting from weights
(pretrained); test-time augmentation (tta); what any model can be asked, lite or timm's (tools).

    python -m resnet_lite.models      # the family at a glance
"""
from .lite import LiteResNet, convert_notebook_state_dict, create_model, list_models, published_weights
from .lite import convert_seed_state_dict as convert_seed_state_dict  # the earlier name, kept importable
from .tools import classifier_prefixes, count_macs, count_params

__all__ = ["LiteResNet", "classifier_prefixes", "convert_notebook_state_dict", "count_macs", "count_params",
           "create_model", "list_models", "published_weights"]
