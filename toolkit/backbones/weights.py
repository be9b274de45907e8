"""Pretrained weights: metadata per backbone, lookup in the timm/torch caches (downloading into them on first use),
and key mapping into this toolkit."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from toolkit.backbones.download import (
    DownloadError,
    download_file,
    download_from_hub,
    hub_file_url,
    mirrored,
    offline_switch,
)
from toolkit.errors import ConfigError, DataError, WeightsNotFoundError

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "TOOLKIT_WEIGHTS_DIR"

#: a peer state dict + the target backbone -> the same tensors under this toolkit's
#: ImageClassifier names (`backbone.stages...`, `head.fc...`)
Converter = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Weights:
    """One published weight file and what it is (torchvision's weights-enum habit)."""

    backbone: str  # the registry name these weights fit
    source: str  # what `backbone.pretrained` says to pick them: "timm", "torchvision", "torchvision:IMAGENET1K_V1"
    name: str  # the publisher's name for them
    file_name: str  # the file in the publisher's cache
    url: str
    converter: Converter | None = None
    matches: Callable[[dict], bool] | None = None  # does a state dict have the publisher's key layout?
    alpha: float = 1.0
    num_params: int = 0  # of the publisher's whole classifier at 1000 classes
    mult_adds: int = 0  # conv + FC multiply-adds at `resolution`, the paper's way of counting
    resolution: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    top1: float | None = None  # ImageNet-1k top-1 the publisher reports
    hf_hub_id: str | None = None  # set for weights that live on the Hugging Face hub (timm)
    requires: dict[str, str] = field(default_factory=dict)  # builder options the weights assume
    fetch_hint: str = ""  # the command that fills the cache on a machine with internet

    # ---- where the file may be ----------------------------------------------------------------
    def flat_file_name(self) -> str:
        """The name to give the file in $TOOLKIT_WEIGHTS_DIR (unique across publishers)."""
        return f"{self.name}{Path(self.file_name).suffix}" if self.hf_hub_id else self.file_name

    def search_paths(self) -> list[Path]:
        """Candidate files in the order they are tried: $TOOLKIT_WEIGHTS_DIR, then the publisher's cache."""
        paths: list[Path] = []
        if os.environ.get(WEIGHTS_DIR_ENV):
            paths.append(Path(os.environ[WEIGHTS_DIR_ENV]).expanduser() / self.flat_file_name())
        if self.hf_hub_id:
            from huggingface_hub import try_to_load_from_cache

            # the file `main` points to, as hf_hub_download would return it offline; the cache folder is
            # passed because huggingface_hub reads HF_HOME/HF_HUB_CACHE once, at import
            cached = try_to_load_from_cache(self.hf_hub_id, self.file_name, cache_dir=hf_hub_cache_dir())
            if isinstance(cached, str):  # else None or the "known to be missing" marker
                paths.append(Path(cached))
        else:
            paths.append(Path(torch.hub.get_dir()) / "checkpoints" / self.file_name)
        return paths

    def _cache_folder(self) -> Path:
        if self.hf_hub_id:
            return hf_hub_cache_dir() / ("models--" + self.hf_hub_id.replace("/", "--"))
        return Path(torch.hub.get_dir()) / "checkpoints"

    def _cache_glob(self) -> str:
        return f"snapshots/<revision>/{self.file_name}" if self.hf_hub_id else self.file_name

    def download_url(self) -> str:
        """Where a download fetches the file: hub files from $HF_ENDPOINT, other URLs through $TOOLKIT_WEIGHTS_MIRROR."""
        return hub_file_url(self.hf_hub_id, self.file_name) if self.hf_hub_id else mirrored(self.url)

    def download(self) -> Path:
        """Download the file into its publisher's cache (see toolkit.backbones.download); DownloadError if it fails."""
        if self.hf_hub_id:
            return download_from_hub(self.hf_hub_id, self.file_name, cache_dir=hf_hub_cache_dir())
        return download_file(self.download_url(), self._cache_folder() / self.file_name)

    def locate(self) -> Path:
        """The weight file on disk, downloaded into the publisher's cache on first use unless offline;
        raises `WeightsNotFoundError` (one line) saying why and where to put the file by hand."""
        for path in self.search_paths():
            if path.is_file():
                return path
        url = self.download_url()
        switch = offline_switch(hub=bool(self.hf_hub_id))
        if switch is None:
            try:
                return self.download()
            except DownloadError as err:
                why = f"downloading {url} failed ({err})"
        else:
            why = f"downloads are off ({switch})"
        looked = [str(self._cache_folder() / self._cache_glob())]
        if os.environ.get(WEIGHTS_DIR_ENV):
            looked.append(str(Path(os.environ[WEIGHTS_DIR_ENV]).expanduser() / self.flat_file_name()))
            put = f"{looked[-1]}"
        else:
            put = f"${WEIGHTS_DIR_ENV}/{self.flat_file_name()} (set {WEIGHTS_DIR_ENV} to a folder of your choice)"
        raise WeightsNotFoundError(
            f"backbone.pretrained={self.source}: {self.backbone} weights {self.name} ({self.file_name}) are not on "
            f"this machine and {why}. Looked in: {'; '.join(looked)}. "
            f"Fix: download {url} and save it as {put}, or run `{self.fetch_hint}` on a machine with internet "
            f"and copy {self._cache_folder()} over, or pass the file's path as backbone.pretrained=/path/to/file."
        )


def hf_hub_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment at call time with huggingface_hub's rules
    (huggingface_hub.constants.HF_HUB_CACHE is fixed when it is first imported)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return cache / "huggingface" / "hub"


# ---- the weights registry ---------------------------------------------------------------------
_WEIGHTS: dict[str, dict[str, Weights]] = {}


def register_weights(weights: Weights, default_for: str | None = None) -> Weights:
    """Make `weights` loadable as `backbone.pretrained=<weights.source>` (and `=<default_for>`)."""
    sources = _WEIGHTS.setdefault(weights.backbone, {})
    for key in filter(None, (weights.source, default_for)):
        if key in sources:
            raise ValueError(f"weights {key!r} for {weights.backbone} are already registered")
        sources[key] = weights
    return weights


def register_torchvision_weights(backbone: str, enum) -> list[Weights]:
    """Register every entry of a torchvision weights enum as `torchvision:<ENTRY>`; `torchvision` is its DEFAULT.

    The enum's own metadata (URL, params, GFLOPs - torchvision's GFLOPs are multiply-adds - top-1,
    mean/std of its transforms) becomes ours, so the two never disagree.
    """
    registered = []
    for entry in enum:
        transforms = entry.transforms()
        file_name = entry.url.rsplit("/", 1)[-1]
        weights = Weights(
            backbone=backbone,
            source=f"torchvision:{entry.name}",
            name=f"{enum.__name__}.{entry.name}",
            file_name=file_name,
            url=entry.url,
            converter=torchvision_mobilenet_to_toolkit,
            matches=torchvision_mobilenet_matches,
            alpha=1.0,
            num_params=entry.meta["num_params"],
            mult_adds=round(entry.meta["_ops"] * 1e9),
            resolution=transforms.crop_size[0],
            mean=tuple(transforms.mean),
            std=tuple(transforms.std),
            top1=entry.meta["_metrics"]["ImageNet-1K"]["acc@1"],
            fetch_hint=f"python -c \"import torchvision; torchvision.models.{enum.__name__}.{entry.name}.get_state_dict()\"",
        )
        register_weights(weights, default_for="torchvision" if entry == enum.DEFAULT else None)
        registered.append(weights)
    return registered


def list_weights(backbone: str | None = None) -> dict[str, dict[str, Weights]]:
    """{backbone: {source: Weights}} of the known weight sources (all backbones, or one)."""
    if backbone is None:
        return {k: dict(v) for k, v in _WEIGHTS.items()}
    return {backbone: dict(_WEIGHTS.get(backbone, {}))}


def get_weights(backbone: str, source: str, alpha: float = 1.0) -> Weights:
    """The registered weights `source` names for `backbone` at width `alpha`; ConfigError if none."""
    known = _WEIGHTS.get(backbone, {})
    if source not in known:
        allowed = f"{backbone} has weights from {', '.join(known)}" if known else f"{backbone} has no published weights"
        raise ConfigError("backbone.pretrained", source, f"{allowed}; or pass a local checkpoint path")
    weights = known[source]
    if float(alpha) != weights.alpha:
        raise ConfigError(
            "backbone.pretrained", source,
            f"{weights.name} exists only at alpha {weights.alpha} (got alpha {alpha}); train from scratch "
            "(backbone.pretrained=null) or pass a local checkpoint of this width",
        )
    return weights


PUBLISHERS = ("timm", "torchvision")


def is_known_source(source: str) -> bool:
    """`timm`, `torchvision`, `torchvision:<ENTRY>` or another registered source (not a file path)."""
    return any(source in sources for sources in _WEIGHTS.values()) or source.split(":", 1)[0] in PUBLISHERS


# ---- reading and converting state dicts -----------------------------------------------------------
def read_state_dict(path: str | Path, *, trust: bool | None = None, what: str = "weights file") -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors, .pth/.pt state dict or a Lightning/timm .ckpt (its `state_dict`).

    Pickled files are read as data (`toolkit.io.load_torch_file`): one holding other Python objects is refused
    unless `trust` (None: the run's `trust_file`)."""
    from toolkit.io import load_torch_file

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = load_torch_file(path, trust=trust, what=what)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise DataError(f"{path}: expected a state dict (or a checkpoint holding one), found {type(obj).__name__}")
    return obj


def to_classifier_state_dict(state: dict[str, torch.Tensor], backbone: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """`state` under ImageClassifier names (`backbone.stages...`, `head.fc...`), whatever layout it came in.

    Understood: this toolkit's checkpoints (bare backbone, ImageClassifier, any Lightning task whose
    model holds the backbone), and the publishers' original state dicts of the weights registered for
    `name` (converted through their key mapping).
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DDP-wrapped saves
    prefixes = Counter(k[: k.index("stages.")] for k in state if "stages." in k)
    if prefixes:
        prefix = prefixes.most_common(1)[0][0]
        out = {"backbone." + k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix + "stages.")}
        head = prefix.removesuffix("backbone.") + "head."
        out.update({k[len(head) - len("head."):]: v for k, v in state.items() if prefix and k.startswith(head)})
        return out
    for weights in {id(w): w for w in _WEIGHTS.get(name, {}).values()}.values():
        if weights.matches is not None and weights.matches(state):
            return weights.converter(state, backbone)
    sample = ", ".join(list(state)[:3])
    raise DataError(
        f"unrecognised key layout for backbone {name} (first keys: {sample}); expected a checkpoint of this "
        f"toolkit or the original state dict of {', '.join(sorted(_WEIGHTS.get(name, {}))) or 'no known publisher'}"
    )


def load_backbone_state(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    """Strictly load `backbone.*` tensors into `model`, naming what does not fit."""
    target = model.state_dict()
    # a FrozenBatchNorm2d (norm_layer at build time) has BatchNorm's buffers but no update counter to load
    backbone_state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
                      and (k.removeprefix("backbone.") in target or not k.endswith(".num_batches_tracked"))}
    missing = [k for k in target if k not in backbone_state]
    unexpected = [k for k in backbone_state if k not in target]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in backbone_state.items()
             if k in target and v.shape != target[k].shape]
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''} ({len(items)})"
            for label, items in (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", wrong))
            if items
        )
        raise DataError(f"{origin} does not fit this backbone (another width or model?): {details}")
    model.load_state_dict(backbone_state)


def resolve_pretrained(name: str, pretrained: str | Path | bool, alpha: float = 1.0) -> tuple[Path, Weights | None]:
    """The file `backbone.pretrained` names for registry backbone `name`, and its registered weights if any.

    `pretrained` is a known source (`timm`, `torchvision`, `torchvision:IMAGENET1K_V1`, or `True` for
    the backbone's first registered source), found in the caches or downloaded into them, or a local file.
    """
    if pretrained is True or str(pretrained).lower() == "true":
        known = _WEIGHTS.get(name, {})
        if not known:
            raise ConfigError("backbone.pretrained", pretrained, f"{name} has no published weights; pass a local file")
        pretrained = next(iter(known))
    if isinstance(pretrained, str) and is_known_source(pretrained):
        weights = get_weights(name, pretrained, alpha)
        return weights.locate(), weights
    path = Path(pretrained).expanduser()
    if not path.is_file():
        sources = ", ".join(_WEIGHTS.get(name, {})) or "none"
        raise WeightsNotFoundError(
            f"backbone.pretrained={str(pretrained)!r}: no such file. Pass a .pth/.pt/.safetensors/.ckpt path "
            f"or a known source for {name} ({sources})."
        )
    return path, None


# ---- timm's weights (for timm/<model> backbones) -----------------------------------------------------
TIMM_SOURCES = ("timm", "true")  # backbone.pretrained values meaning "timm's default weights for this model"


def resolve_timm_pretrained(model_name: str, pretrained: str | bool) -> Path:
    """The weight file for `timm/<model_name>`: timm's default weights from the cache or downloaded into it
    (`timm`), or a local path."""
    if str(pretrained).lower() in TIMM_SOURCES:
        return timm_weights(model_name).locate()
    path = Path(pretrained).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"backbone.pretrained={str(pretrained)!r}: no such file. Pass a .pth/.pt/"
                                   f".safetensors/.ckpt path, or `timm` for timm's weights of {model_name}.")
    return path


def timm_weights(model_name: str) -> Weights:
    """Where timm's default pretrained weights for `model_name` (or `name.tag`) live."""
    import timm

    cfg = timm.models.get_pretrained_cfg(model_name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ConfigError("backbone.pretrained", "timm", f"timm publishes no weights for {model_name}")
    name = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    if cfg.hf_hub_id:
        file_name = cfg.hf_hub_filename or "model.safetensors"
        url = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/{file_name}"
    else:
        file_name, url = cfg.url.rsplit("/", 1)[-1], cfg.url
    return Weights(
        backbone=f"timm/{model_name}",
        source="timm",
        name=name,
        file_name=file_name,
        url=url,
        hf_hub_id=cfg.hf_hub_id or None,
        mean=tuple(cfg.mean),
        std=tuple(cfg.std),
        fetch_hint=f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\"",
    )


def check_pretrained(backbone: dict) -> Path | None:
    """Fail before any work when a backbone config's `pretrained` cannot be loaded; returns the file.

    Checks what the config alone decides: the source exists for this backbone and width, the file is
    on disk (downloaded now if it is not and downloads are allowed), and builder options the weights need
    (V1 from timm: `act: relu6`) are set.
    """
    name, pretrained = backbone["name"], backbone.get("pretrained")
    if not pretrained:
        return None
    if name.startswith("timm/"):
        return resolve_timm_pretrained(name.removeprefix("timm/"), pretrained)
    path, weights = resolve_pretrained(name, pretrained, backbone.get("alpha") or 1.0)
    for option, value in (weights.requires.items() if weights else ()):
        if backbone.get(option) != value:
            raise ConfigError(f"backbone.{option}", backbone.get(option),
                              f"{weights.name} was trained with {option}={value}: set backbone.{option}={value} to load it")
    return path


def load_pretrained(model: nn.Module, name: str, pretrained: str | Path | bool, **kwargs) -> Path:
    """Load `pretrained` (see `resolve_pretrained`) into backbone `model`, built by builder `name` with `kwargs`.

    Publishers' state dicts go through their key mapping; this toolkit's checkpoints load as they are.
    Returns the file read, and sets `model.mean/std` to the normalisation the weights expect.
    """
    path, weights = resolve_pretrained(name, pretrained, kwargs.get("alpha", 1.0))
    state = read_state_dict(path, what="backbone.pretrained file")
    for candidate in [weights] if weights else list(_WEIGHTS.get(name, {}).values()):
        if candidate.matches is not None and candidate.matches(state):
            _check_requirements(model, candidate, kwargs)
            weights = candidate
            break
    load_backbone_state(model, to_classifier_state_dict(state, model, name), str(path))
    if weights is not None:
        model.mean, model.std = weights.mean, weights.std
    log.info("backbone %s: loaded weights from %s", name, path)
    return path


def _check_requirements(model: nn.Module, weights: Weights, kwargs: dict) -> None:
    act = weights.requires.get("act")
    if act is None:
        return
    classes = {"relu": nn.ReLU, "relu6": nn.ReLU6}
    if not any(type(m) is classes[act] for m in model.modules()):
        raise ConfigError(
            "backbone.act", kwargs.get("act", "relu"),
            f"{weights.name} was trained with act={act}: set backbone.act={act} to load it",
        )


# ---- key mappings -------------------------------------------------------------------------------
_TIMM_V1_PARTS = {"conv_dw": "dw.conv", "bn1": "dw.bn", "conv_pw": "pw.conv", "bn2": "pw.bn"}


def timm_mobilenetv1_matches(state: dict) -> bool:
    return "conv_stem.weight" in state and any(k.startswith("blocks.") for k in state)


def timm_mobilenetv1_to_toolkit(state: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """timm `mobilenetv1_*` (EfficientNet builder) -> `mobilenet_v1` + ClassifierHead names.

    timm nests blocks by stage (`blocks.<stage>.<block>`); ours are numbered conv1..conv13 in order.
    Padding (symmetric, k // 2) and BatchNorm eps (1e-5) are the same in both, so only `act` must
    match (timm trained with ReLU6).
    """
    blocks = sorted({(int(m[1]), int(m[2])) for k in state if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))})
    number = {ij: n for n, ij in enumerate(blocks, start=1)}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(("conv_stem.", "bn1.")):
            part, rest = key.split(".", 1)
            out[f"backbone.stages.conv0.{'conv' if part == 'conv_stem' else 'bn'}.{rest}"] = value
        elif m := re.match(r"blocks\.(\d+)\.(\d+)\.(conv_dw|bn1|conv_pw|bn2)\.(.+)", key):
            out[f"backbone.stages.conv{number[(int(m[1]), int(m[2]))]}.{_TIMM_V1_PARTS[m[3]]}.{m[4]}"] = value
        elif key.startswith("classifier."):
            out["head.fc." + key.removeprefix("classifier.")] = value
        else:
            raise DataError(f"timm MobileNet V1 state dict: unexpected key {key!r} (has no place in mobilenet_v1)")
    return out


def torchvision_mobilenet_matches(state: dict) -> bool:
    return any(k.startswith("features.") for k in state)


def torchvision_mobilenet_to_toolkit(state: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    """torchvision MobileNetV2/V3 -> TorchvisionMobileNet + ClassifierHead names.

    `features.<i>.*` becomes `stages.<stage holding i>.<i>.*`. V2's classifier (dropout + one Linear)
    is our ClassifierHead's FC; V3's two-layer classifier (Linear, Hardswish, Linear) has no place in a
    single-FC head and is left out - the backbone weights are what transfer.
    """
    stage_of = backbone.feature_stage
    linear_ids = {k.split(".")[1] for k in state if k.startswith("classifier.")}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.match(r"features\.(\d+)\.(.+)", key):
            index = int(m[1])
            if index not in stage_of:
                raise DataError(f"torchvision state dict: layer features.{index} does not exist in this backbone")
            out[f"backbone.stages.{stage_of[index]}.{index}.{m[2]}"] = value
        elif key.startswith("classifier.") and len(linear_ids) == 1:
            out["head.fc." + key.split(".", 2)[2]] = value
        elif not key.startswith("classifier."):
            raise DataError(f"torchvision MobileNet state dict: unexpected key {key!r}")
    return out
