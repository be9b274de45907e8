"""Pretrained weights: key mappings proven against timm/torchvision, offline cache lookup, local files, metadata
(downloads: tests/test_weights_download.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from toolkit.backbones import create_backbone
from toolkit.backbones.timm_backbone import TimmBackbone
from toolkit.backbones.weights import (
    check_pretrained,
    get_weights,
    list_weights,
    load_pretrained,
    to_classifier_state_dict,
)
from toolkit.errors import ConfigError, DataError, WeightsNotFoundError
from toolkit.heads import ImageClassifier
from toolkit.profiling import count_model

TIMM_V1 = "mobilenetv1_100.ra4_e3600_r224_in1k"
TORCHVISION = {
    "mobilenet_v2": (torchvision.models.mobilenet_v2, "mobilenet_v2-7ebf99e0.pth"),
    "mobilenet_v3_large": (torchvision.models.mobilenet_v3_large, "mobilenet_v3_large-5c1a4163.pth"),
    "mobilenet_v3_small": (torchvision.models.mobilenet_v3_small, "mobilenet_v3_small-047dcff4.pth"),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small forwards


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty Hugging Face, torch hub and toolkit weight folders, as on a fresh offline machine
    (TOOLKIT_OFFLINE=1: nothing is downloaded; tests/test_weights_download.py covers downloads)."""
    dirs = {key: tmp_path / key for key in ("hf", "torch", "weights")}
    monkeypatch.setenv("TOOLKIT_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(dirs["hf"]))
    monkeypatch.setenv("TORCH_HOME", str(dirs["torch"]))
    monkeypatch.setenv("TOOLKIT_WEIGHTS_DIR", str(dirs["weights"]))
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    return dirs


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so a wrong eps or a swapped BN shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 1e-3)
            m.weight.data.copy_(1 + torch.randn(m.num_features, generator=g) * 0.1)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def timm_v1():
    torch.manual_seed(0)
    return randomize_bn(timm.create_model("mobilenetv1_100", pretrained=False))


@pytest.fixture(scope="module")
def image():
    return torch.randn(2, 3, 128, 128, generator=torch.Generator().manual_seed(1))


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-5


# ---- the key mappings -------------------------------------------------------------------------------
def test_timm_v1_mapping_reproduces_timm_logits(timm_v1, image):
    ours = ImageClassifier(create_backbone("mobilenet_v1", act="relu6"), 1000)
    ours.load_state_dict(to_classifier_state_dict(timm_v1.state_dict(), ours.backbone, "mobilenet_v1"), strict=True)
    ours.eval()
    with torch.no_grad():
        assert_close(ours(image), timm_v1(image))
        assert_close(ours.backbone(image), timm_v1.forward_features(image))


def test_timm_v1_mapping_needs_relu6(timm_v1, image):
    # the same tensors in a ReLU network give other outputs: why loading insists on act=relu6
    ours = ImageClassifier(create_backbone("mobilenet_v1", act="relu"), 1000)
    ours.load_state_dict(to_classifier_state_dict(timm_v1.state_dict(), ours.backbone, "mobilenet_v1"))
    with torch.no_grad():
        assert (ours.eval()(image) - timm_v1(image)).abs().max() > 1e-3


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_mapping_reproduces_torchvision(name, image):
    torch.manual_seed(0)
    peer = randomize_bn(TORCHVISION[name][0]())
    ours = ImageClassifier(create_backbone(name), 1000).eval()
    state = to_classifier_state_dict(peer.state_dict(), ours.backbone, name)
    result = ours.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    with torch.no_grad():
        assert_close(ours.backbone(image), peer.features(image))
        if name == "mobilenet_v2":  # V2's classifier is one FC: the whole network maps
            assert not result.missing_keys
            assert_close(ours(image), peer(image))
        else:  # V3's two-layer classifier has no place in ClassifierHead; only the backbone transfers
            assert result.missing_keys == ["head.fc.weight", "head.fc.bias"]


# ---- metadata ---------------------------------------------------------------------------------------------
def test_timm_v1_metadata_matches_the_model(timm_v1):
    weights = get_weights("mobilenet_v1", "timm")
    assert weights.name == TIMM_V1 and weights.hf_hub_id == f"timm/{TIMM_V1}"
    cfg = timm.models.get_pretrained_cfg("mobilenetv1_100")
    assert (weights.mean, weights.std, weights.resolution) == (cfg.mean, cfg.std, cfg.input_size[-1])
    count = count_model(timm_v1, torch.randn(1, 3, 224, 224))
    assert weights.num_params == count.params == 4_231_976
    assert weights.mult_adds == count.mult_adds  # ~569M: the paper's 1.0 MobileNet-224
    ours = ImageClassifier(create_backbone("mobilenet_v1"), 1000)
    assert sum(p.numel() for p in ours.parameters()) == weights.num_params


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_metadata_matches_counts(name):
    weights = get_weights(name, "torchvision")
    assert weights.file_name == TORCHVISION[name][1]
    count = count_model(TORCHVISION[name][0](), torch.randn(1, 3, 224, 224))
    assert weights.num_params == count.params
    # torchvision's "GFLOPS" are multiply-adds, rounded to 3 digits
    assert abs(weights.mult_adds - count.mult_adds) <= 0.5e6
    assert set(list_weights(name)[name]) >= {"torchvision", "torchvision:IMAGENET1K_V1"}


# ---- offline lookup ---------------------------------------------------------------------------------------
def test_missing_timm_weights_say_what_to_put_where(caches):
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone("mobilenet_v1", act="relu6", pretrained="timm")
    message = str(err.value)
    assert "model.safetensors" in message
    assert str(caches["hf"] / "hub" / f"models--timm--{TIMM_V1}" / "snapshots") in message
    assert str(caches["weights"] / f"{TIMM_V1}.safetensors") in message
    assert f"https://huggingface.co/timm/{TIMM_V1}/resolve/main/model.safetensors" in message


def test_missing_torchvision_weights_say_what_to_put_where(caches, monkeypatch):
    monkeypatch.delenv("TOOLKIT_WEIGHTS_DIR")
    with pytest.raises(WeightsNotFoundError) as err:
        create_backbone("mobilenet_v2", pretrained="torchvision")
    message = str(err.value)
    assert str(caches["torch"] / "hub" / "checkpoints" / "mobilenet_v2-7ebf99e0.pth") in message
    assert "https://download.pytorch.org/models/mobilenet_v2-7ebf99e0.pth" in message
    assert "set TOOLKIT_WEIGHTS_DIR" in message
    assert "downloads are off (TOOLKIT_OFFLINE=1)" in message and "\n" not in message


def test_timm_weights_load_from_the_hugging_face_cache(caches, timm_v1, image):
    repo = caches["hf"] / "hub" / f"models--timm--{TIMM_V1}"  # the layout hf_hub_download leaves
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    save_file({k: v.contiguous() for k, v in timm_v1.state_dict().items()}, snapshot / "model.safetensors")
    model = create_backbone("mobilenet_v1", alpha=1.0, act="relu6", pretrained="timm").eval()
    with torch.no_grad():
        assert_close(model(image), timm_v1.forward_features(image))
    assert model.mean == (0.5, 0.5, 0.5)
    # the config check finds it too, and refuses the paper's ReLU for these weights
    assert check_pretrained({"name": "mobilenet_v1", "alpha": 1.0, "act": "relu6", "pretrained": "timm"}).parent == snapshot
    with pytest.raises(ConfigError, match="backbone.act.*relu6"):
        check_pretrained({"name": "mobilenet_v1", "alpha": 1.0, "act": "relu", "pretrained": "timm"})
    with pytest.raises(ConfigError, match="backbone.act.*relu6"):
        create_backbone("mobilenet_v1", act="relu", pretrained="timm")
    # timm's own features_only wrapper reads the same cached file
    wrapped = TimmBackbone("mobilenetv1_100", pretrained="timm").eval()
    with torch.no_grad():
        assert_close(wrapped(image), timm_v1.forward_features(image))


def test_torchvision_weights_load_from_torch_hub_and_weights_dir(caches, image):
    torch.manual_seed(0)
    v2 = randomize_bn(torchvision.models.mobilenet_v2())
    checkpoints = caches["torch"] / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(v2.state_dict(), checkpoints / "mobilenet_v2-7ebf99e0.pth")
    model = create_backbone("mobilenet_v2", pretrained="torchvision").eval()
    with torch.no_grad():
        assert_close(model(image), v2.features(image))

    small = randomize_bn(torchvision.models.mobilenet_v3_small(), seed=3)
    caches["weights"].mkdir()
    torch.save(small.state_dict(), caches["weights"] / "mobilenet_v3_small-047dcff4.pth")
    model = create_backbone("mobilenet_v3_small", pretrained="torchvision:IMAGENET1K_V1").eval()
    with torch.no_grad():
        assert_close(model(image), small.features(image))


def test_sources_that_do_not_exist_are_config_errors(caches):
    with pytest.raises(ConfigError, match=r"backbone.pretrained.*only at alpha 1.0"):
        create_backbone("mobilenet_v1", alpha=0.5, act="relu6", pretrained="timm")
    with pytest.raises(ConfigError, match=r"backbone.pretrained.*only at alpha 1.0"):
        create_backbone("mobilenet_v3_large", alpha=0.75, pretrained="torchvision")
    with pytest.raises(ConfigError, match="mobilenet_v1 has weights from timm"):
        create_backbone("mobilenet_v1", pretrained="torchvision")
    with pytest.raises(ConfigError, match="no published weights"):
        create_backbone("mobilenet_v1_conv", pretrained="timm")
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        create_backbone("mobilenet_v2", pretrained="torchvision:IMAGENET1K_V9")


# ---- local files ------------------------------------------------------------------------------------------
def test_local_files_in_every_layout_load(tmp_path, timm_v1, image):
    torch.manual_seed(0)
    source = randomize_bn(ImageClassifier(create_backbone("mobilenet_v1", alpha=0.25), 10), seed=5)
    with torch.no_grad():
        expected = source.backbone(image)
    files = {
        "classifier.pt": source.state_dict(),
        "lightning.ckpt": {"state_dict": {"model." + k: v for k, v in source.state_dict().items()}, "epoch": 3},
        "ddp.pth": {"module." + k: v for k, v in source.backbone.state_dict().items()},
    }
    for file_name, content in files.items():
        torch.save(content, tmp_path / file_name)
    save_file(source.backbone.state_dict(), tmp_path / "backbone.safetensors")
    for file_name in [*files, "backbone.safetensors"]:
        model = create_backbone("mobilenet_v1", alpha=0.25, pretrained=str(tmp_path / file_name)).eval()
        with torch.no_grad():
            assert_close(model(image), expected)

    # the peer's original state dict goes through the key mapping
    torch.save(timm_v1.state_dict(), tmp_path / "timm_original.pth")
    model = create_backbone("mobilenet_v1", act="relu6", pretrained=str(tmp_path / "timm_original.pth")).eval()
    with torch.no_grad():
        assert_close(model(image), timm_v1.forward_features(image))


def test_bad_local_files_are_named(tmp_path):
    with pytest.raises(WeightsNotFoundError, match=r"no_such\.pth.*no such file"):
        create_backbone("mobilenet_v1", pretrained=str(tmp_path / "no_such.pth"))
    wrong_width = create_backbone("mobilenet_v1", alpha=0.5)
    torch.save(wrong_width.state_dict(), tmp_path / "half.pth")
    with pytest.raises(DataError, match=r"half\.pth does not fit.*shape"):
        create_backbone("mobilenet_v1", alpha=0.25, pretrained=str(tmp_path / "half.pth"))
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(DataError, match="unrecognised key layout"):
        load_pretrained(create_backbone("mobilenet_v2", alpha=0.25), "mobilenet_v2", tmp_path / "other.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(DataError, match="expected a state dict"):
        create_backbone("mobilenet_v2", pretrained=str(tmp_path / "list.pth"))


def test_timm_backbone_loads_its_own_checkpoint_and_reports_missing_weights(tmp_path, caches, image):
    source = TimmBackbone("mobilenetv3_small_050").eval()
    torch.save({"state_dict": {"model.backbone." + k: v for k, v in source.state_dict().items()}},
               tmp_path / "task.ckpt")
    loaded = create_backbone("timm/mobilenetv3_small_050", pretrained=str(tmp_path / "task.ckpt")).eval()
    with torch.no_grad():
        assert_close(loaded(image), source(image))
    with pytest.raises(WeightsNotFoundError, match=r"models--timm--mobilenetv3_small_050\.lamb_in1k"):
        create_backbone("timm/mobilenetv3_small_050", pretrained="timm")
    assert check_pretrained({"name": "timm/mobilenetv3_small_050", "pretrained": None}) is None
    assert Path(check_pretrained({"name": "timm/x", "pretrained": str(tmp_path / "task.ckpt")})).name == "task.ckpt"
