"""Distillation teachers, built from the `teacher` config: frozen, eval mode, no gradients.

A teacher is one of:
- `kind: path` with a file: a `.ckpt` of this toolkit (any task; e.g. a wide MobileNet trained with
  `teacher=none`), a TorchScript file (`torch.jit.save`), or a teacher cache (`mode=teacher_cache`
  `.pt`, or an `.npz` of keys/outputs exported from another framework);
- `kind: model`: a registry backbone (`mobilenet_v1` at any width, `timm/<model>`) with trained
  weights, whose pooled features are the embedding.
An online teacher runs on the student's own (augmented) batch, re-normalised and resized when it
expects other input statistics or another resolution; a cached teacher looks its outputs up by key.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from toolkit.distill.cache import CACHE_FORMAT, OUTPUT_KINDS, TeacherCache
from toolkit.errors import ConfigError, DataError
from toolkit.io import load_torch_file, require_trust
from toolkit.tasks.base import registered_task_class

log = logging.getLogger(__name__)

TEACHER_KINDS = ("none", "path", "model")
_FILE_HELP = ("teacher= takes a .ckpt written by this toolkit, a TorchScript file (torch.jit.save; torch.export .pt2), or a teacher "
              "cache (.pt from mode=teacher_cache, or .npz with arrays keys/outputs)")


def teacher_enabled(spec: dict | None) -> bool:
    return bool(spec) and spec.get("kind", "none") not in (None, "none")


class FrozenTeacher(nn.Module):
    """Base: stays in eval mode whatever `.train()` is asked, and never builds a graph."""

    output: str | None = None   # "logits" | "probabilities" | "embedding" (None: unspecified)
    dim: int | None = None      # width of the outputs, where known without running the teacher
    description: str = "teacher"

    def train(self, mode: bool = True) -> FrozenTeacher:
        return super().train(False)

    def set_input_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """The mean/std the student's batches were normalised with."""

    def probe_dim(self, resolution: int = 224) -> int | None:
        """The output width (running the teacher once on a blank batch where it is not known otherwise)."""
        return self.dim

    def verify(self, keys: Iterable[str] | None, dim: int | None, outputs: Sequence[str] | None,
               resolution: int | None = None) -> None:
        """Raise if this teacher cannot serve the run (wrong width or kind; for a cache: images missing, or made
        from other inputs than this run's `resolution` and `set_input_stats`)."""


class OnlineTeacher(FrozenTeacher):
    """A network run on the student's view of each batch."""

    def __init__(self, net: nn.Module, output: str | None, description: str, dim: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, resolution: int | None = None):
        super().__init__()
        self.net = net
        self.output, self.description, self.dim = output, description, dim
        self.resolution = resolution
        self.teacher_stats = (tuple(mean), tuple(std)) if mean is not None and std is not None else None
        self.register_buffer("_shift", torch.zeros(1, 3, 1, 1), persistent=False)
        self.register_buffer("_scale", torch.ones(1, 3, 1, 1), persistent=False)
        for param in self.net.parameters():  # (ScriptModules refuse requires_grad_ on the module)
            param.requires_grad_(False)
        self.eval()

    def set_input_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """x_teacher = (x * std_s + mean_s - mean_t) / std_t, when the teacher expects other statistics."""
        if self.teacher_stats is None:
            return
        t_mean, t_std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in self.teacher_stats)
        s_mean, s_std = (torch.tensor(tuple(v), dtype=torch.float32).view(1, 3, 1, 1) for v in (mean, std))
        self._scale.copy_(s_std / t_std)
        self._shift.copy_((s_mean - t_mean) / t_std)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> torch.Tensor:
        x = images * self._scale + self._shift
        if self.resolution and tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False,
                              antialias=True)
        out = self.net(x)
        if isinstance(out, list | tuple):
            out = out[0]
        if not isinstance(out, torch.Tensor):
            raise DataError(f"{self.description}: returned {type(out).__name__}; a teacher must return a tensor "
                            "(N x D logits, probabilities or embedding)")
        return out.flatten(1).float()

    def probe_dim(self, resolution: int = 224) -> int:
        if self.dim is None:
            device = next((b.device for b in self.buffers()), torch.device("cpu"))
            self.dim = int(self(torch.zeros(2, 3, self.resolution or resolution, self.resolution or resolution,
                                            device=device)).shape[1])
        return self.dim

    def verify(self, keys: Iterable[str] | None, dim: int | None, outputs: Sequence[str] | None,
               resolution: int | None = None) -> None:
        if outputs is not None and self.output is not None and self.output not in outputs:
            raise ConfigError("teacher", self.description, f"it gives {self.output}; this task needs {' or '.join(outputs)}")
        if dim is not None and self.probe_dim() != dim:
            raise ConfigError("teacher", self.description, f"its outputs are {self.dim}-d but this task needs {dim}-d")


class CachedTeacher(FrozenTeacher):
    """Outputs looked up in a `TeacherCache` by the batch's image keys."""

    def __init__(self, cache: TeacherCache):
        super().__init__()
        self.cache = cache
        self.output, self.dim = cache.output, cache.dim
        self.description = f"teacher cache {cache.path}"
        self.run_inputs: dict = {}

    def forward(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> torch.Tensor:
        if keys is None:
            raise DataError(f"{self.description}: the batch carries no image keys to look outputs up by")
        return self.cache.lookup(keys).to(images.device)

    def set_input_stats(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.run_inputs.update(mean=list(mean), std=list(std))  # compared with what the cache was made with

    def verify(self, keys: Iterable[str] | None, dim: int | None, outputs: Sequence[str] | None,
               resolution: int | None = None) -> None:
        self.cache.verify(keys if keys is not None else [], dim, outputs, {**self.run_inputs, "resolution": resolution})


class PooledFeatures(nn.Module):
    """A backbone's global-average-pooled deepest features: the embedding of a classifier-like network."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x).mean(dim=(2, 3))


class _ExportedGraph(nn.Module):
    """A `torch.export` graph keeps the mode it was exported in (eval) and refuses `.train()`/`.eval()`."""

    def __init__(self, graph: nn.Module):
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True) -> _ExportedGraph:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


# ---- building from the config -------------------------------------------------------------------
def build_teacher(spec: dict, outputs: Sequence[str] | None = None) -> FrozenTeacher:
    """The teacher `spec` (the `teacher` config) describes; `outputs` are the kinds the caller accepts."""
    spec = dict(spec or {})
    kind = spec.get("kind", "none")
    if kind not in TEACHER_KINDS:
        raise ConfigError("teacher.kind", kind, f"allowed: {', '.join(TEACHER_KINDS)}")
    if kind == "none":
        raise ConfigError("teacher", "none", "this job needs a teacher: teacher=/path/to/teacher.ckpt (or a TorchScript "
                          "file or teacher cache), or teacher=model with teacher.weights=...")
    output = spec.get("output") or "auto"
    if output != "auto" and output not in OUTPUT_KINDS:
        raise ConfigError("teacher.output", output, f"allowed: auto, {', '.join(OUTPUT_KINDS)}")
    teacher = _teacher_from_file(spec, outputs) if kind == "path" else _teacher_from_registry(spec, outputs)
    log.info("teacher: %s (%s%s)", teacher.description, teacher.output or "outputs",
             f", {teacher.dim}-d" if teacher.dim else "")
    return teacher


def _teacher_from_file(spec: dict, outputs: Sequence[str] | None) -> FrozenTeacher:
    raw = spec.get("path")
    if not raw:
        raise ConfigError("teacher.path", raw, f"give the teacher file: {_FILE_HELP}")
    path = Path(str(raw)).expanduser()
    if not path.is_file():
        raise DataError(f"teacher file {path}: not found. {_FILE_HELP}.")
    if path.suffix == ".npz":
        return CachedTeacher(TeacherCache.load(path))
    if path.suffix == ".pt2" or _is_torchscript(path):
        return _torchscript_teacher(path, spec, outputs)
    obj = load_torch_file(path, what="teacher file")  # as data: a file needing more is refused naming trust_file
    if isinstance(obj, dict) and obj.get("format") == CACHE_FORMAT:
        return CachedTeacher(TeacherCache.from_object(obj, path))
    if isinstance(obj, dict) and "state_dict" in obj and "hyper_parameters" in obj:
        return _checkpoint_teacher(path, obj, spec, outputs)
    raise DataError(f"teacher file {path}: not recognised (a {type(obj).__name__}). {_FILE_HELP}.")


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives hold compiled code (`<name>/code/...`); `torch.save` archives do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())


def _pick_output(declared: str, native: str | None, outputs: Sequence[str] | None, what: str) -> str:
    if declared != "auto":
        return declared
    if native is not None and (outputs is None or native in outputs):
        return native
    if outputs:
        return outputs[0]
    raise ConfigError("teacher.output", "auto", f"say what the {what} returns: {', '.join(OUTPUT_KINDS)}")


def _torchscript_teacher(path: Path, spec: dict, outputs: Sequence[str] | None) -> OnlineTeacher:
    """TorchScript (`torch.jit.save`), or its successor `torch.export.save` (`.pt2`)."""
    kind = "exported" if path.suffix == ".pt2" else "TorchScript"
    require_trust(path, "teacher file", f"a {kind} program ({'torch.export' if kind == 'exported' else 'torch.jit.save'})")
    net = (_ExportedGraph(torch.export.load(str(path)).module()) if kind == "exported"
           else torch.jit.load(str(path), map_location="cpu"))
    output = _pick_output(spec.get("output") or "auto", None, outputs, f"{kind} teacher")
    return OnlineTeacher(net, output, f"{kind} teacher {path}", None, spec.get("mean"), spec.get("std"),
                         spec.get("resolution"))


def _checkpoint_teacher(path: Path, ckpt: dict, spec: dict, outputs: Sequence[str] | None) -> OnlineTeacher:
    class_path = ckpt.get("task_class")  # BaseTask.on_save_checkpoint records it
    if class_path is None:
        raise DataError(f"teacher checkpoint {path}: no `task_class` entry, so not a task checkpoint of this toolkit; "
                        f"{_FILE_HELP}.")
    task = registered_task_class(class_path, path).restore(path, checkpoint=ckpt)
    native = getattr(task, "distill_output", "logits")
    output = _pick_output(spec.get("output") or "auto", native, outputs, "checkpoint")
    name = f"{type(task).__name__} checkpoint {path}"
    if output == native or (native == "logits" and output == "probabilities"):
        net, dim = task, getattr(task, "output_dim", None)
        if output == "probabilities":  # the checkpoint gives logits; give what was asked for
            net = nn.Sequential(task, nn.Sigmoid())
    elif output == "embedding" and getattr(getattr(task, "model", None), "backbone", None) is not None:
        net, dim = PooledFeatures(task.model.backbone), task.model.backbone.num_features
    else:
        raise ConfigError("teacher", str(path), f"a {type(task).__name__} checkpoint gives {native}, not {output}")
    return OnlineTeacher(net, output, name, dim, spec.get("mean"), spec.get("std"), spec.get("resolution"))


def _teacher_from_registry(spec: dict, outputs: Sequence[str] | None) -> OnlineTeacher:
    from toolkit.backbones import create_backbone
    from toolkit.backbones.weights import read_state_dict

    backbone_cfg = dict(spec.get("backbone") or {})
    if not backbone_cfg.get("name"):
        raise ConfigError("teacher.backbone.name", None, "name the teacher's backbone (e.g. mobilenet_v1 or timm/<model>)")
    weights = spec.get("weights")
    if not weights and not backbone_cfg.get("pretrained"):
        raise ConfigError("teacher.weights", weights, "a registry teacher needs trained weights: teacher.weights=<.ckpt "
                          "or state dict> or teacher.backbone.pretrained=<source>; an untrained teacher teaches nothing")
    output = _pick_output(spec.get("output") or "auto", "embedding", outputs, "registry teacher")
    if output != "embedding":
        raise ConfigError("teacher.kind", "model", "a registry backbone gives an embedding (pooled features); for "
                          f"{output} pass a checkpoint of a task with a head (teacher=/path/to/task.ckpt)")
    backbone = create_backbone(**backbone_cfg)
    if weights:
        path = Path(str(weights)).expanduser()
        if not path.is_file():
            raise DataError(f"teacher.weights={path}: no such file (a .ckpt of this toolkit or a state dict)")
        state = read_state_dict(path, what="teacher.weights file")
        for prefix in ("model.backbone.", "backbone."):  # task checkpoints and ImageClassifier state dicts
            if any(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
                break
        result = backbone.load_state_dict(state, strict=False)
        if result.missing_keys:
            raise DataError(f"teacher.weights={path}: {len(result.missing_keys)} backbone tensors missing (e.g. "
                            f"{result.missing_keys[0]!r}); is it a checkpoint of {backbone_cfg['name']} at this width?")
    name = f"registry teacher {backbone_cfg['name']}" + (f" alpha={backbone_cfg['alpha']}" if "alpha" in backbone_cfg else "")
    return OnlineTeacher(PooledFeatures(backbone), "embedding", name, backbone.num_features,
                         spec.get("mean") or backbone.mean, spec.get("std") or backbone.std, spec.get("resolution"))
