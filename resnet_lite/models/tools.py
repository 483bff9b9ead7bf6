"""Questions asked of any model (a lite one or any timm model): its size, its compute, its classifier."""
import torch
import torch.nn as nn

__all__ = ["classifier_prefixes", "count_macs", "count_params"]


def classifier_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes ('fc.') of the classifier(s) timm's get_classifier() returns."""
    get_classifier = getattr(model, "get_classifier", None)  # timm's models have it; a plain Module need not
    heads = get_classifier() if get_classifier is not None else ()
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    return tuple(f"{name}." for name, m in model.named_modules() if name and any(m is h for h in heads))


def count_macs(model, input_size=(3, 32, 32)):
    """Multiply-accumulates of one forward pass of one image, counted over convolutions and linear layers."""
    macs = 0

    def conv_hook(m, inputs, output):
        nonlocal macs
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        macs += output.numel() * k

    def linear_hook(m, inputs, output):
        nonlocal macs
        macs += output.numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(linear_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return macs


def count_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
