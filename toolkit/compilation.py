"""`compile` (a top-level run setting): run a task's model through `torch.compile`, falling back to eager with one warning.

The model's `forward` is replaced in place by a compiled one, so the module tree and its `state_dict` keys stay
as they are (no `_orig_mod.` prefix in checkpoints). Compilation is lazy: it happens at the first call, and a
failure there (no C++ compiler, an operator inductor cannot lower) switches the model back to eager for the rest
of the run; the same call is then repeated eagerly, so a genuine error in the model still surfaces.

`compile=auto` (the default) leaves training eager (compiling costs 30-50 s per model on a CPU and the
training speed-up measured by benchmarks/speed/throughput.py was smaller than bf16's) and compiles eval/predict runs
over at least `COMPILE_PAYS_AFTER_IMAGES` images: on a quiet 2-core Sapphire Rapids machine compiled bf16
inference of MobileNet V1 1.0-224 ran at 237 images/s against 114 eager, i.e. ~4.5 ms saved per image, which
repays a ~40 s compilation after ~9,000 images (docs/performance.md).

`compile=int8` (eval/predict of tasks whose model maps an image batch to its outputs) quantizes the model
with PyTorch 2 export quantization for x86 (torchao's `X86InductorQuantizer`: per-channel int8 weights, int8
activations with ranges calibrated on real images) and compiles it with inductor's weight freezing, which lowers
the quantized convolutions to oneDNN int8 kernels (AVX-512 VNNI, AMX). This is the CPU server path; phones get
int8 through `mode=export` (`onnx_int8`, `executorch_int8`).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from toolkit.errors import ConfigError

log = logging.getLogger(__name__)

#: the values of the `compile` key
SETTINGS = (True, False, "auto", "int8")
INT8_MODES = ("eval", "predict")  # int8 needs calibrated, fixed weights: never for training
COMPILE_PAYS_AFTER_IMAGES = 10_000


def should_compile(setting: Any, mode: str, n_images: int | None = None) -> bool:
    """Whether a `mode` run (train | eval | predict) compiles under `compile=setting`."""
    check_setting(setting)
    if setting == "int8":
        if mode not in INT8_MODES:
            raise ConfigError("compile", setting, f"int8 is for mode=eval|predict, not mode={mode} (training needs "
                                                      "float weights; mode=export formats=[onnx_int8] for files)")
        return True
    if setting != "auto":
        return bool(setting)
    return mode in ("eval", "predict") and n_images is not None and n_images >= COMPILE_PAYS_AFTER_IMAGES


def check_setting(setting: Any) -> None:
    """The `compile` value, one of `SETTINGS`: else one line listing them."""
    if isinstance(setting, bool) or setting in ("auto", "int8"):
        return
    raise ConfigError("compile", setting, "allowed: true, false, auto (eval/predict over >= "
                                          f"{COMPILE_PAYS_AFTER_IMAGES} images), int8 (eval/predict, x86)")


class CompiledForward:
    """A module's compiled forward that falls back to its eager one, once and with one warning, on failure.

    A deep copy of the module (count_model's CPU copy, an EMA copy) gets the copy's plain eager forward.
    """

    def __init__(self, eager, **compile_kwargs: Any):
        self.eager = eager
        self.compiled = torch.compile(eager, **compile_kwargs)
        self.failed = False

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compiler failure; an error of the model itself recurs eagerly
            self._fall_back(error, "torch.compile")
            return self.eager(*args, **kwargs)

    def _fall_back(self, error: Exception, what: str) -> None:
        self.failed = True
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        warnings.warn(f"{what} failed for {type(self.eager.__self__).__name__}, running it eagerly "
                      f"instead ({type(error).__name__}: {message})", RuntimeWarning, stacklevel=3)

    def __deepcopy__(self, memo):
        return copy.deepcopy(self.eager, memo)  # the bound method, re-bound to the module's copy


def compile_module(module: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """Replace `module.forward` in place by a `CompiledForward` (state_dict keys unchanged); returns `module`."""
    module.forward = CompiledForward(module.forward, **compile_kwargs)
    log.info("torch.compile: %s compiles at its first call (30-50 s on a CPU)", type(module).__name__)
    return module


def quantize_int8(module: nn.Module, calibration: Sequence[torch.Tensor], max_batch: int = 1024) -> nn.Module:
    """`module` (eval mode, image batch in) as an int8 graph for x86 CPUs, compiled with weight freezing.

    PT2E static quantization with `X86InductorQuantizer`'s default recipe (per-channel symmetric int8 weights,
    per-tensor int8 activations; BatchNorm folded into the convolutions), activation ranges observed on
    `calibration` (image batches the deployed model will see: the eval transform). The batch dimension stays
    dynamic (1..`max_batch`), so a short last batch runs the same graph."""
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as error:
        raise ConfigError("compile", "int8", "needs torchao: pip install 'mobilenet-toolkit[int8]'") from error
    example = calibration[0]
    if len(example) < 2:  # torch.export specialises a dimension of size 1
        example = example.repeat(2, *([1] * (example.dim() - 1)))
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            graph = torch.export.export(module, (example,), dynamic_shapes=({0: batch},)).module()
            prepared = prepare_pt2e(graph, quantizer)
            for images in calibration:
                prepared(images)
            quantized = convert_pt2e(prepared)
    finally:
        module.train(was_training)
    return FrozenCompiled(torch.compile(quantized))


class FrozenCompiled:
    """A compiled inference graph whose compilations run with inductor's weight freezing: weights become constants,
    so inductor pre-packs them for oneDNN's int8 convolutions. The switch is inductor's config, set only around
    these calls, as PyTorch's x86 int8 tutorial does; `torch.compile(options={"freezing": True})` fails on the
    quantized graph in torch 2.14 (no fake-tensor kernel for `onednn.qconv_prepack`)."""

    def __init__(self, compiled):
        self.compiled = compiled

    def __call__(self, *args, **kwargs):
        import torch._inductor.config as inductor_config  # torch is pinned (<= 2.14.1) in pyproject.toml

        with inductor_config.patch(freezing=True):
            return self.compiled(*args, **kwargs)


class EagerForward(nn.Module):
    """A module's eager forward as a module of its own: what torch.export traces once `module.forward` (an instance
    attribute, see `compile_module`) has been replaced by a wrapper taking `*args`."""

    def __init__(self, forward):
        super().__init__()
        self.module, self.forward_fn = forward.__self__, forward
        self.train(self.module.training)

    def forward(self, images: torch.Tensor):
        return self.forward_fn(images)


class QuantizedForward(CompiledForward):
    """A module's forward run by its int8 graph (built at the first call from `calibration`), falling back to the
    eager float forward with one warning when quantization or compilation fails."""

    def __init__(self, eager, calibration: Callable[[], Sequence[torch.Tensor]]):
        self.eager, self.calibration = eager, calibration
        self.compiled = None
        self.failed = False

    def __call__(self, *args, **kwargs):
        if self.compiled is None and not self.failed:
            try:
                self.compiled = quantize_int8(EagerForward(self.eager), self.calibration())
            except ConfigError:
                raise
            except Exception as error:  # noqa: BLE001 - an operator the exporter or quantizer cannot handle
                self._fall_back(error, "int8 quantization")
        return super().__call__(*args, **kwargs)


def int8_trainer_settings(setting: Any) -> dict[str, str]:
    """Trainer overrides for a `compile=int8` run: float32 around the int8 graph (bf16 autocast would turn its
    dequantised operators into bf16 ones, which the int8 kernels do not fuse)."""
    return {"precision": "32-true"} if setting == "int8" else {}


def compile_task_model(setting: Any, task, mode: str, n_images: int | None = None,
                       calibration: Callable[[], Sequence[torch.Tensor]] | None = None) -> bool:
    """Compile `task.model` where the `compile` setting says so for this `mode`; returns whether it did.
    `calibration`: gives the image batches `compile=int8` calibrates on (called once, at the first batch)."""
    if not should_compile(setting, mode, n_images):
        return False
    if setting == "int8":
        if calibration is None or task.data_kind == "detection":  # detectors take image lists and decode boxes
            raise ConfigError("compile", setting, f"int8 is for tasks whose model takes an image batch "
                                                      f"(not {type(task).__name__}); mode=export "
                                                      "formats=[onnx_int8,executorch_int8] quantizes detectors")
        task.model.forward = QuantizedForward(task.model.forward, calibration)
        log.info("compile=int8: %s is quantized (x86 PT2E int8) and compiled at its first batch",
                 type(task.model).__name__)
        return True
    compile_module(task.model)
    return True
