"""Mult-adds and parameters by forward hooks on Conv2d/Linear, with the paper's Table 2 breakdown by layer type.

The paper counts multiply-adds of convolutions and fully connected layers only (no BatchNorm,
activation, pooling or additions), and its Table 2 parameter shares are shares of the conv/FC
*weights* (no BatchNorm, no biases): that definition reproduces 74.59 / 1.06 / 0.02 / 24.33 %
for 1.0 MobileNet-224 exactly, and also Table 9's 1.32M for 0.50 MobileNet-160 (all parameters
give 1.33M). So a count reports both: `params` (every parameter of the model) and `weights`
(conv/FC weights, the paper's count).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: layer types of the breakdown, in the order of the paper's Table 2 (plus the full convs it lacks)
LAYER_TYPES: dict[str, str] = {
    "conv_1x1": "Conv 1x1",
    "conv_dw": "Conv DW (depthwise)",
    "conv_first": "Conv (first layer, full)",
    "conv_full": "Conv (other full convs)",
    "fc": "Fully connected",
}


@dataclass
class LayerCount:
    """One executed Conv2d/Linear call: its module name, layer type, mult-adds and weight count."""

    name: str
    layer_type: str
    mult_adds: int
    weights: int
    shape: str  # e.g. "3x3 dw 512" or "1024->1000", for reading the per-layer listing


@dataclass
class ModelCount:
    """What `count_model` measured for one forward pass of the example input."""

    params: int  # every parameter of the model (conv, BN affine, biases, FC...)
    weights: int  # conv/FC weights of the layers that ran: the paper's parameter count
    mult_adds: int  # conv + FC multiply-adds of the forward pass
    layers: list[LayerCount] = field(default_factory=list)

    def breakdown(self) -> dict[str, dict[str, float]]:
        """Per layer type: mult-adds, weights and their shares in percent (Table 2)."""
        out = {}
        for key in LAYER_TYPES:
            mult_adds = sum(layer.mult_adds for layer in self.layers if layer.layer_type == key)
            weights = sum(layer.weights for layer in self._unique_layers() if layer.layer_type == key)
            out[key] = {
                "mult_adds": mult_adds,
                "weights": weights,
                "mult_adds_share": 100.0 * mult_adds / self.mult_adds if self.mult_adds else 0.0,
                "params_share": 100.0 * weights / self.weights if self.weights else 0.0,
            }
        return out

    def subtotal(self, prefix: str) -> dict[str, int]:
        """Mult-adds and weights of the layers whose module name starts with `prefix` (e.g. "backbone.")."""
        return {
            "mult_adds": sum(layer.mult_adds for layer in self.layers if layer.name.startswith(prefix)),
            "weights": sum(layer.weights for layer in self._unique_layers() if layer.name.startswith(prefix)),
        }

    def _unique_layers(self) -> list[LayerCount]:
        # a module run several times (shared heads, RoI stages) has its weights counted once
        seen, unique = set(), []
        for layer in self.layers:
            if layer.name not in seen:
                seen.add(layer.name)
                unique.append(layer)
        return unique

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "weights": self.weights, "mult_adds": self.mult_adds,
                "breakdown": self.breakdown()}


def is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups > 1 and conv.groups == conv.in_channels


def conv_layer_type(conv: nn.Conv2d, first: bool) -> str:
    """Table 2's classes. `first` is True for the first conv that runs (the paper's full 3x3 stem)."""
    if is_depthwise(conv):
        return "conv_dw"
    if conv.kernel_size == (1, 1) and conv.groups == 1:
        return "conv_1x1"
    return "conv_first" if first else "conv_full"


def conv_mult_adds(conv: nn.Conv2d, output: torch.Tensor) -> int:
    """Every output element is a dot product over (in_channels / groups) x kh x kw inputs."""
    kh, kw = conv.kernel_size
    return output.numel() * (conv.in_channels // conv.groups) * kh * kw


def linear_mult_adds(linear: nn.Linear, output: torch.Tensor) -> int:
    return output.numel() * linear.in_features


def count_model(model: nn.Module, example_input: Any) -> ModelCount:
    """Run `model` once on `example_input` (a tensor, a list of images, a tuple of args) and count.

    Counts are for that input as given: pass batch size 1 for per-image figures. Detectors count
    what actually runs (e.g. Faster R-CNN's second stage runs once per proposal kept).
    """
    layers: list[LayerCount] = []
    names = {module: name for name, module in model.named_modules()}
    first_conv: list[nn.Module] = []  # the first conv module that runs is the stem, however often it runs

    def hook(module: nn.Module, _inputs, output) -> None:
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            if not first_conv:
                first_conv.append(module)
            layer_type = conv_layer_type(module, first=module is first_conv[0])
            shape = (f"{kh}x{kw} dw {module.in_channels}" if layer_type == "conv_dw"
                     else f"{kh}x{kw} {module.in_channels}->{module.out_channels}")
            layers.append(LayerCount(names[module], layer_type, conv_mult_adds(module, output),
                                     module.weight.numel(), shape))
        else:
            layers.append(LayerCount(names[module], "fc", linear_mult_adds(module, output), module.weight.numel(),
                                     f"{module.in_features}->{module.out_features}"))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            call(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    unique = {layer.name: layer.weights for layer in layers}
    return ModelCount(
        params=sum(p.numel() for p in model.parameters()),
        weights=sum(unique.values()),
        mult_adds=sum(layer.mult_adds for layer in layers),
        layers=layers,
    )


def call(model: nn.Module, example_input: Any) -> Any:
    """A tuple is positional arguments; anything else (a tensor, a list of images) is the one argument."""
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)


def flop_counter_mult_adds(model: nn.Module, example_input: Any) -> int:
    """An independent count: torch's FlopCounterMode FLOPs of conv and matmul ops, halved (1 MAC = 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.inference_mode(), counter:
            call(model, example_input)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
