"""Backbone registry behaviour, and feature_info checked against real forward shapes for every built-in backbone."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from toolkit.backbones import Backbone, create_backbone, list_backbones, register_backbone, registry
from toolkit.errors import ConfigError

BUILT_IN = ["mobilenet_v1", "mobilenet_v1_conv", "mobilenet_v1_shallow", "mobilenet_v2", "mobilenet_v3_large",
            "mobilenet_v3_small"]
ALPHAS = [0.25, 0.5, 0.75, 1.0]
RESOLUTIONS = [128, 160, 192, 224]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small forwards


# ---- registry -----------------------------------------------------------------------------------
@pytest.fixture
def scratch_registry(monkeypatch):
    """Register test builders into a copy, so the real registry is untouched."""
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))


def test_list_backbones_lists_builtins_and_filters_by_pattern():
    assert set(BUILT_IN) <= set(list_backbones())
    assert list_backbones("mobilenet_v3*") == ["mobilenet_v3_large", "mobilenet_v3_small"]
    assert list_backbones("mobilenet_v1*") == ["mobilenet_v1", "mobilenet_v1_conv", "mobilenet_v1_shallow"]
    assert list_backbones("no_such_*") == []


def test_duplicate_names_are_refused(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(lambda **kw: None, name="mobilenet_v1")

    @register_backbone
    def tiny_backbone(alpha: float = 1.0) -> Backbone:
        return create_backbone("mobilenet_v1", alpha=alpha)

    assert "tiny_backbone" in list_backbones()
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(tiny_backbone)
    with pytest.raises(ValueError, match="reserved"):
        register_backbone(tiny_backbone, name="timm/anything")


def test_none_kwargs_are_ignored():
    # what a config with unset options passes: the builder's defaults apply
    model = create_backbone("mobilenet_v1", alpha=0.25, act=None, min_depth=None, pretrained=None)
    assert model.feature_info.get("conv13").channels == 256
    assert any(isinstance(m, nn.ReLU) for m in model.modules())
    model = create_backbone("mobilenet_v2", alpha=None)
    assert model.feature_info.get("last_conv").channels == 1280


def test_unknown_name_and_bad_alpha_are_config_errors():
    with pytest.raises(ConfigError, match=r"backbone.name.*mobilenet_v2.*timm/<model>"):
        create_backbone("mobilenet_v9")
    for alpha in (0, -0.5):
        with pytest.raises(ConfigError, match="backbone.alpha"):
            create_backbone("mobilenet_v3_small", alpha=alpha)


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v1_shallow", "mobilenet_v2", "mobilenet_v3_small",
                                  "timm/mobilenetv3_small_050"])
def test_norm_layer_builds_frozen_batchnorm_that_takes_the_same_weights(name):
    """`norm_layer=FrozenBatchNorm2d` at build time: no BatchNorm left, a BatchNorm model's state dict loads strictly,
    and the outputs are the BatchNorm model's in eval mode (V3 keeps its eps 0.001)."""
    width = {} if name.startswith("timm/") else {"alpha": 0.5}
    torch.manual_seed(0)
    reference = create_backbone(name, **width).eval()
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    frozen = create_backbone(name, norm_layer=FrozenBatchNorm2d, **width).eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    frozen.load_state_dict(reference.state_dict())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(reference(x), frozen(x), atol=1e-5)


# ---- shapes and feature_info ----------------------------------------------------------------------
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("name", BUILT_IN)
def test_feature_info_matches_forward_shapes(name, alpha):
    model = create_backbone(name, alpha=alpha).eval()
    taps = model.feature_info.names()
    assert len(taps) == len(set(taps)) >= 5
    assert model.num_features == model.feature_info[-1].channels
    # strides rise from 2 to 32 and every stride change has a tap
    assert model.feature_info.reductions()[0] == 2 and model.feature_info.reductions()[-1] == 32
    assert {2, 4, 8, 16, 32} <= set(model.feature_info.reductions())
    with torch.no_grad():
        for resolution in RESOLUTIONS:
            x = torch.randn(1, 3, resolution, resolution)
            outputs = model.forward_taps(x, taps)
            assert list(outputs) == taps
            for tap, out in zip(model.feature_info, outputs.values(), strict=True):
                size = resolution // tap.reduction
                assert tuple(out.shape) == (1, tap.channels, size, size), (name, alpha, resolution, tap)
            assert torch.equal(model(x), outputs[taps[-1]])


def test_width_multiplier_scales_channels():
    # V1: TF-slim's max(int(d * alpha), 8); V2/V3: torchvision's round-to-multiple-of-8
    assert create_backbone("mobilenet_v1", alpha=0.75).feature_info.channels(["conv0", "conv13"]) == [24, 768]
    assert create_backbone("mobilenet_v1", alpha=0.1).feature_info.channels(["conv0", "conv1"]) == [8, 8]
    v2 = {a: create_backbone("mobilenet_v2", alpha=a).feature_info for a in (0.5, 1.0, 1.4)}
    assert [v2[a].get("stage5").channels for a in (0.5, 1.0, 1.4)] == [160, 320, 448]
    assert [v2[a].get("last_conv").channels for a in (0.5, 1.0, 1.4)] == [1280, 1280, 1792]
    large = create_backbone("mobilenet_v3_large", alpha=1.0).feature_info
    assert large.channels() == [16, 24, 40, 112, 160, 960]
    small = create_backbone("mobilenet_v3_small", alpha=1.0).feature_info
    assert small.channels() == [16, 16, 24, 48, 96, 576]


def test_forward_taps_returns_requested_taps_in_order_and_split_at_composes():
    model = create_backbone("mobilenet_v2", alpha=0.25).eval()
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        outs = model.forward_taps(x, ["last_conv", "stage4"])
        assert list(outs) == ["last_conv", "stage4"]
        head, tail = model.split_at("stage4")
        middle = head(x)
        assert torch.equal(middle, outs["stage4"])
        assert torch.equal(tail(middle), outs["last_conv"])
    with pytest.raises(KeyError, match="taps are"):
        model.forward_taps(x, ["conv11"])


def test_torchvision_stages_keep_feature_indices():
    model = create_backbone("mobilenet_v3_small")
    # V3-Small's first inverted residual already has stride 2: stage2 is that one layer
    assert [list(dict(s.named_children())) for s in model.stages] == [
        ["0"], ["1"], ["2", "3"], ["4", "5", "6", "7", "8"], ["9", "10", "11"], ["12"]]
    assert model.feature_stage[7] == "stage4"


# ---- timm passthrough -------------------------------------------------------------------------------
def test_timm_backbone_feature_info_matches_forward_shapes():
    model = create_backbone("timm/mobilenetv1_100").eval()
    assert model.feature_info.names() == ["blocks_0", "blocks_1", "blocks_2", "blocks_3", "blocks_4"]
    assert model.feature_info.reductions() == [2, 4, 8, 16, 32]
    assert model.num_features == 1024
    assert model.mean == (0.5, 0.5, 0.5)
    with torch.no_grad():
        for resolution in (128, 224):
            outs = model.forward_taps(torch.randn(1, 3, resolution, resolution), ["blocks_4", "blocks_3"])
            assert list(outs) == ["blocks_4", "blocks_3"]
            for name, out in outs.items():
                tap = model.feature_info.get(name)
                assert tuple(out.shape) == (1, tap.channels, resolution // tap.reduction, resolution // tap.reduction)


def test_timm_backbone_out_indices_and_errors():
    model = create_backbone("timm/mobilenetv3_small_050", out_indices=[2, 4], pretrained=None)
    assert model.feature_info.reductions() == [8, 32]
    assert model(torch.randn(1, 3, 64, 64)).shape[1] == model.num_features
    with pytest.raises(ConfigError, match="backbone.alpha"):
        create_backbone("timm/mobilenetv1_100", alpha=0.5)
    with pytest.raises(ConfigError, match="not a timm model"):
        create_backbone("timm/mobilenet_v9")
    with pytest.raises(ConfigError, match="cannot be cut"):
        model.split_at("blocks_2")
