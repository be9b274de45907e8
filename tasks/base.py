"""BaseTask: the LightningModule every task extends (torchgeo's BaseTask habit).

Constructors are keyword-only. `BaseTask.__init__` declares what every task takes (the backbone, the model
builder's keyword arguments, the optimisation settings); a subclass declares only its own typed arguments and
forwards the rest as `**kwargs` (torchgeo's habit), then fills the `configure_models / configure_losses /
configure_metrics` hooks. `save_hyperparameters` records the arguments of every constructor in the chain, all
plain data (dicts, numbers, strings), so `Task.load_from_checkpoint(path)` alone restores a model.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, ClassVar

import hydra.utils
import torch
import torchmetrics
from lightning.pytorch import LightningModule
from torch import nn

from toolkit.backbones.registry import accepted_keywords, backbone_settings, unknown_keyword_error
from toolkit.backbones.weights import read_state_dict
from toolkit.data.kinds import DataKind
from toolkit.errors import ConfigError, DataError, ToolkitError
from toolkit.io import load_torch_file, trust_file_enabled
from toolkit.predictions import PredictionFiles
from toolkit.tasks.inference import InferenceContract

log = logging.getLogger(__name__)


#: the BatchNorm layers a frozen backbone keeps in eval mode (torch's public classes; `_BatchNorm` is private)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _unknown_hparams_message(path, keys: list[str]) -> str:
    """Refused, not dropped: a setting this version does not know may change the model the weights belong to."""
    return (f"{path}: written by another version of the toolkit (or edited): hyper-parameters this version does not "
            f"know: {', '.join(keys)}; load it with the toolkit version that wrote it, or remove those keys from the "
            "checkpoint's hyper_parameters if they do not change the model")

class BaseTask(LightningModule):
    #: the metric that picks the best checkpoint, and whether higher ("max") or lower ("min") is better
    monitor: str = "val/loss"
    monitor_mode: str = "min"
    #: input resolutions must be a multiple of this (classification heads expect the stride-32 grid)
    resolution_multiple: int = 1
    #: the kind of records the task reads; the datamodule must yield that `kind` (toolkit.data.contract)
    data_kind: ClassVar[DataKind]
    #: what the task computes at inference, for export, verification and the torch-free predictor
    #: (`toolkit.tasks.inference`); the default: `self.model`, one tensor out
    inference_contract: ClassVar[type[InferenceContract]] = InferenceContract

    def __init__(
        self,
        *,
        backbone: dict,
        model: dict | None = None,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        backbone_lr_scale: float = 1.0,
        freeze_backbone_epochs: int = 0,
    ):
        """backbone: the registry config (`{"name": "mobilenet_v1", "alpha": 1.0, ...}`).
        model: keyword arguments for the task's model builder (`task.model` in the config): the builder's
          signature declares each of them and its default, the task passes them through unread.
        optimizer / scheduler: `_target_` + arguments (the scheduler also takes Lightning's `interval`, `frequency`).
        backbone_lr_scale: the backbone's learning rate relative to the rest (fine-tuning).
        freeze_backbone_epochs: the first N epochs train everything but the backbone (BN statistics frozen too).
        """
        super().__init__()
        self.save_hyperparameters()
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """`task.model`: the keyword arguments `configure_models` passes to the model builder."""
        return dict(self.hparams.get("model") or {})

    # ---- hooks the tasks fill -------------------------------------------------------------
    def configure_models(self) -> None:
        """Create `self.model` (an nn.Module with a `.backbone` where the task has one)."""
        raise NotImplementedError

    def configure_losses(self) -> None:
        """Create the loss modules."""

    def configure_metrics(self) -> None:
        """Create torchmetrics collections."""

    def example_input(self, resolution: int, batch_size: int = 1) -> Any:
        """An input `self.model` accepts; profiling and export trace the model with it."""
        return torch.randn(batch_size, 3, resolution, resolution)

    def inference(self) -> InferenceContract:
        """The task's inference contract: the module each export format writes, its metadata, how a runtime's
        outputs are scored (`toolkit.tasks.inference`)."""
        return self.inference_contract(self)

    def write_eval_outputs(self, metrics: dict[str, float], output_dir: Path) -> None:
        """Write task-specific evaluation files (tables, detections, plots) next to metrics.json."""

    def prediction_files(self, output_dir: Path) -> PredictionFiles:
        """The files `mode=predict` writes `predict_step`'s records into, a batch at a time (`toolkit.predictions`)."""
        raise NotImplementedError(f"{type(self).__name__} does not support mode=predict")

    @classmethod
    def restore(cls, path: str | Path, *, checkpoint: dict | None = None, trust: bool | None = None,
                **overrides: Any) -> BaseTask:
        """The trained task in a checkpoint this toolkit wrote, on the CPU; `overrides` replace whole top-level
        hyper-parameters (`checkpoint`: the file's contents, when the caller has read them already). A `task_class`
        the file names must be one of the toolkit's tasks. The checkpoint holds every trained weight, so the
        `backbone.pretrained` file that training started from is not asked for again (it may not exist on this
        machine). The file is read as data (`weights_only`) unless `trust` (None: the run's `trust_file`)."""
        trust = trust_file_enabled() if trust is None else trust
        if checkpoint is None:
            checkpoint = read_checkpoint(path, trust=trust, mmap=True)
        if checkpoint.get("task_class"):
            registered_task_class(checkpoint["task_class"], path)  # a file names no class outside the toolkit's tasks
        hparams = checkpoint.get("hyper_parameters") or {}
        backbone = overrides.get("backbone", hparams.get("backbone"))
        if isinstance(backbone, dict) and backbone.get("pretrained"):
            overrides["backbone"] = {**backbone, "pretrained": None}
        settings = {**hparams, **overrides}
        accepted = accepted_keywords(cls)
        unknown = [f"task.{k}" for k in settings if accepted is not None and k not in accepted and not k.startswith("_")]
        backbone_keys = backbone_settings(backbone.get("name")) if isinstance(backbone, dict) else None
        unknown += [f"backbone.{k}" for k in backbone if backbone_keys is not None and k not in backbone_keys]
        if unknown:
            raise DataError(_unknown_hparams_message(path, unknown))
        try:
            return cls.load_from_checkpoint(path, map_location="cpu", weights_only=not trust, **overrides)
        except Exception as error:
            model = settings.get("model")  # its keys are the model builder's: known to be unknown only on the call
            known = unknown_keyword_error(error, model if isinstance(model, dict) else {}, prefix="task.model")
            if known is None:
                raise
            raise DataError(_unknown_hparams_message(path, [known.key])) from error

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # lets tools that only hold a checkpoint (teachers, export) rebuild the right task without guessing
        checkpoint["task_class"] = f"{type(self).__module__}.{type(self).__qualname__}"

    # ---- optimisation -----------------------------------------------------------------------
    def param_groups(self, weight_decay: float, lr: float) -> list[dict]:
        """Weight decay on conv and FC weights only: never on depthwise filters, BN parameters or biases
        (paper §3.2: "very little or no weight decay on the depthwise filters"). Backbone parameters get
        `lr * backbone_lr_scale` (fine-tuning with a lower backbone learning rate)."""
        backbone = getattr(self.model, "backbone", None)
        backbone_params = {id(p) for p in backbone.parameters()} if backbone is not None else set()
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for module in self.modules():
            for name, param in module.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                decays = name == "weight" and isinstance(module, nn.Conv2d | nn.Linear) and not _is_depthwise(module)
                groups.setdefault((decays, id(param) in backbone_params), []).append(param)
        scale = self.hparams.backbone_lr_scale
        return [
            {"params": params, "weight_decay": weight_decay if decays else 0.0, "lr": lr * (scale if in_backbone else 1.0)}
            for (decays, in_backbone), params in sorted(groups.items())
        ]

    def configure_optimizers(self):
        """`task.optimizer` / `task.scheduler` (the optimizer= / scheduler= presets, conf/optimizer/ and
        conf/scheduler/): each a `_target_` class and its keyword arguments. A key the class does not take is a
        ConfigError naming the keys it does (a node left over from another optimiser is the usual cause)."""
        opt_cfg = dict(self.hparams.optimizer or {"_target_": "torch.optim.AdamW", "lr": 1e-3})
        weight_decay = opt_cfg.pop("weight_decay", 0.0)
        optimizer_cls = hydra.utils.get_class(opt_cfg.pop("_target_"))
        check_keyword_arguments(optimizer_cls, {**opt_cfg, "weight_decay": weight_decay}, "task.optimizer",
                                skip=("params",), hint="optimizer=<preset> replaces the whole node")
        optimizer = optimizer_cls(self.param_groups(weight_decay, opt_cfg["lr"]), **opt_cfg)
        if not self.hparams.scheduler:  # scheduler=constant
            return optimizer
        sched_cfg = dict(self.hparams.scheduler)
        interval = sched_cfg.pop("interval", "epoch")
        frequency = sched_cfg.pop("frequency", 1)
        scheduler_cls = hydra.utils.get_class(sched_cfg.pop("_target_"))
        check_keyword_arguments(scheduler_cls, sched_cfg, "task.scheduler", skip=("optimizer", "last_epoch"),
                                hint="scheduler=<preset> replaces the whole node")
        scheduler = scheduler_cls(optimizer, **sched_cfg)
        if getattr(scheduler, "steps_per_epoch", 0) is None and self._trainer is not None:
            # per-step schedules counted in epochs (warm-up, cosine): epochs -> optimizer steps; reading
            # estimated_stepping_batches sets the train loader up
            _ = self.trainer.estimated_stepping_batches
            per_epoch = self.trainer.num_training_batches // self.trainer.accumulate_grad_batches
            scheduler.steps_per_epoch = max(int(per_epoch), 1) if per_epoch != float("inf") else None
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval, "frequency": frequency}}

    def backbone_frozen(self) -> bool:
        """Whether this epoch is one of the first `freeze_backbone_epochs` (the backbone is not trained)."""
        return self._trainer is not None and self.current_epoch < self.hparams.get("freeze_backbone_epochs", 0)

    def on_train_epoch_start(self) -> None:
        backbone = getattr(self.model, "backbone", None)
        if backbone is not None and self.hparams.freeze_backbone_epochs:
            frozen = self.backbone_frozen()
            backbone.requires_grad_(not frozen)
            self.train(self.training)  # BatchNorm mode for this epoch (see `train`)
            if self.current_epoch in (0, self.hparams.freeze_backbone_epochs):
                log.info("epoch %d: backbone %s", self.current_epoch, "frozen" if frozen else "trainable")

    def train(self, mode: bool = True):
        """As nn.Module.train, but a frozen backbone's BatchNorm layers stay in eval mode: frozen means its
        running statistics (what the pretrained weights were trained with) do not drift on the new data either."""
        super().train(mode)
        backbone = getattr(getattr(self, "model", None), "backbone", None)
        if mode and backbone is not None and self.backbone_frozen():
            for module in backbone.modules():
                if isinstance(module, BATCH_NORMS):
                    module.eval()
        return self

    def updated_on_any_rank(self, metric: torchmetrics.Metric) -> bool:
        """Whether any rank updated `metric` this epoch. Collective: every rank asks, so a rank whose batches were
        all skipped still joins the metric's sync at `compute` instead of leaving the others waiting in it."""
        count = torch.tensor(float(metric.update_count), device=self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(count)
        return bool(count > 0)

    def log_loss(self, stage: str, loss: torch.Tensor, batch_size: int) -> None:
        """`<stage>/loss`. Training logs the step's loss; validation and test feed the task's `<stage>_loss`
        torchmetrics mean, weighted by batch size: exact when DDP ranks score different numbers of images, where
        Lightning's `sync_dist` mean of per-rank means is not."""
        if stage == "train":
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)
            return
        mean_loss = getattr(self, f"{stage}_loss")
        mean_loss.update(loss.detach().float(), weight=batch_size)
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=batch_size)

    def log_skipped(self, batch: dict, stage: str) -> None:
        """Count the samples the loader skipped (data.skip_corrupt=true) into the metrics file."""
        skipped = batch.get("skipped", 0) if isinstance(batch, dict) else 0
        self.log(f"{stage}/skipped_samples", float(skipped), reduce_fx="sum", on_step=False, on_epoch=True,
                 sync_dist=True, batch_size=1)

    # ---- fine-tuning ---------------------------------------------------------------------------
    def load_init_weights(self, path: str | Path, *, strict: bool = True) -> dict[str, list[str]]:
        """`init_from`: copy every tensor whose name and shape match from a checkpoint or state dict.

        Accepts a Lightning checkpoint of any task of this toolkit, or a plain state dict of the model.
        The backbone must load: at least `INIT_FROM_MIN_BACKBONE` of its weights (`backbone_weight_keys`: its
        `*.weight` tensors, i.e. conv/linear filters and BatchNorm scales; biases, running statistics and
        `num_batches_tracked` counters match between any two models of one family, so they prove nothing).
        Below that the file is a checkpoint of another backbone or width and a DataError names both, unless
        `strict=False` (`init_from_strict=false`: load what matches, with a warning). Layers whose shapes differ
        (a head for another class count) keep their fresh initialisation, said in one log line.
        """
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"init_from={str(path)!r}: no such file. Pass a .ckpt written by this toolkit "
                            "or a state-dict file (.pt/.pth/.safetensors).")
        state = read_state_dict(path, what="init_from file")
        source = {_strip_model_prefix(k): v for k, v in state.items()}
        target = self.state_dict()
        loaded, reshaped = {}, []
        for key, value in target.items():
            src = source.get(_strip_model_prefix(key))
            if src is None:
                continue
            if src.shape == value.shape:
                loaded[key] = src
            else:
                reshaped.append(key)
        counted = backbone_weight_keys(target)
        matched = sum(k in loaded for k in counted)
        if matched < INIT_FROM_MIN_BACKBONE * len(counted):
            problem = (f"init_from={str(path)!r}: only {matched}/{len(counted)} of this model's backbone weights "
                       f"({matched / max(len(counted), 1):.0%}) load from it: {self._init_from_mismatch(path, source, target)}")
            if strict:
                theirs = _checkpoint_backbone(path) or {}
                same_family = theirs.get("name") == self.hparams.backbone.get("name") and "alpha" in theirs
                fix = (f"train with backbone.alpha={theirs['alpha']} (the checkpoint's width)" if same_family
                       else "train with the checkpoint's backbone")
                raise DataError(f"{problem}. Fix: {fix}, or start from a checkpoint of this backbone; "
                                "init_from_strict=false loads the matching tensors anyway")
            log.warning("%s; loading the %d matching tensors anyway (init_from_strict=false): the rest of the "
                        "backbone trains from its random initialisation", problem, len(loaded))
        self.load_state_dict(loaded, strict=False)
        fresh = [k for k in target if k not in loaded]
        others = [k for k in target if k.endswith(".weight") and k not in set(counted)]
        log.info("init_from %s: backbone %.0f %% (%d/%d weights) loaded; other layers: %d/%d weights loaded, "
                 "re-initialised: %s", path, 100 * matched / max(len(counted), 1), matched, len(counted),
                 sum(k in loaded for k in others), len(others), _reinitialised_layers(fresh, reshaped))
        return {"loaded": sorted(loaded), "reinitialised": fresh, "shape_mismatch": reshaped}

    def _init_from_mismatch(self, path: Path, source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> str:
        """Which backbone the init_from file holds against this run's (from a toolkit checkpoint's hyper-parameters
        where it has them), and one weight whose shape differs or that the file lacks."""
        ours = dict(self.hparams.backbone or {})
        theirs = _checkpoint_backbone(path)
        if theirs is not None:
            differ = [k for k in sorted(set(ours) | set(theirs)) if k not in ("name", "alpha", "pretrained")
                      and ours.get(k) != theirs.get(k)]
            extra = "".join(f", {k}={theirs.get(k)!r} here {ours.get(k)!r}" for k in differ)
            what = (f"the checkpoint is {_describe_backbone(theirs)}, this run is {_describe_backbone(ours)}{extra}")
        else:
            what = f"the file records no backbone (a plain state dict); this run is {_describe_backbone(ours)}"
        for key in backbone_weight_keys(target):
            src = source.get(_strip_model_prefix(key))
            if src is None:
                return f"{what} (e.g. {key!r} is not in the file)"
            if src.shape != target[key].shape:
                return (f"{what} (e.g. {key!r} is {list(src.shape)} there, {list(target[key].shape)} here)")
        return what


#: the share of a model's backbone weights an `init_from` file must provide (below it: another backbone or width)
INIT_FROM_MIN_BACKBONE = 0.9


def backbone_weight_keys(state: dict[str, torch.Tensor]) -> list[str]:
    """The state-dict keys that show a file holds this backbone: the backbone's `*.weight` tensors (conv and
    linear filters, BatchNorm and FrozenBatchNorm scales), not biases, running statistics or `num_batches_tracked`
    counters, whose names and shapes coincide between models of different widths. A model without a
    `model.backbone` counts all its weights."""
    weights = [k for k in state if k.endswith(".weight")]
    return [k for k in weights if k.startswith("model.backbone.")] or weights


def _describe_backbone(backbone: dict) -> str:
    alpha = backbone.get("alpha")
    return f"{backbone.get('name')}" + (f" alpha={alpha}" if alpha is not None else "")


def _checkpoint_backbone(path: Path) -> dict | None:
    """`hyper_parameters["backbone"]` of a toolkit checkpoint (None for a plain state dict or safetensors file)."""
    if path.suffix == ".safetensors":
        return None
    try:
        checkpoint = load_torch_file(path, mmap=True, what="init_from file")
    except (ToolkitError, OSError, RuntimeError):
        return None
    backbone = (checkpoint.get("hyper_parameters") or {}).get("backbone") if isinstance(checkpoint, dict) else None
    return dict(backbone) if isinstance(backbone, dict) else None


def _reinitialised_layers(fresh: list[str], reshaped: list[str], shown: int = 6) -> str:
    """'model.head.fc (shape differs), model.rpn.head.conv (not in the file)', at most `shown` layers named."""
    if not fresh:
        return "none"
    layers: dict[str, str] = {}
    for key in fresh:
        layers.setdefault(key.rsplit(".", 1)[0], "shape differs" if key in reshaped else "not in the file")
    named = [f"{layer} ({why})" for layer, why in sorted(layers.items())]
    return ", ".join(named[:shown]) + (f" and {len(named) - shown} more" if len(named) > shown else "")


def read_checkpoint(path: str | Path, *, trust: bool | None = None, mmap: bool = False) -> dict[str, Any]:
    """A Lightning checkpoint of this toolkit as a dict, read with `toolkit.io.load_torch_file`."""
    checkpoint = load_torch_file(path, trust=trust, mmap=mmap, what="checkpoint")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise DataError(f"checkpoint {str(path)!r}: not a Lightning checkpoint of this toolkit (found "
                        f"{type(checkpoint).__name__}{' without state_dict' if isinstance(checkpoint, dict) else ''})")
    return checkpoint


#: every registered task by class path (`module.QualName`): what a checkpoint's `task_class` may name. A task
#: registers with `@register_task` beside its class; nothing a file names is imported unless registered
TASKS: dict[str, type[BaseTask]] = {}


def register_task(cls: type[BaseTask]) -> type[BaseTask]:
    """Class decorator: the task becomes restorable from its checkpoints (`BaseTask.restore`, `mode=eval/export/
    predict ckpt_path=...`), exportable (its `inference()` contract) and selectable by `task=` (its YAML's
    `_target_`)."""
    TASKS[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def task_classes() -> dict[str, type[BaseTask]]:
    """Every registered task, the toolkit's own included (its task modules are imported here: they register on
    import). The toolkit's task modules are found in the package folder, not listed by hand."""
    import pkgutil

    import toolkit.tasks

    for module in pkgutil.iter_modules(toolkit.tasks.__path__):
        importlib.import_module(f"toolkit.tasks.{module.name}")
    return dict(TASKS)


def registered_task_class(class_path: str, source: str | Path) -> type[BaseTask]:
    """The task class a checkpoint names, if it is registered (`register_task`); a DataError naming the file
    otherwise. A class of the toolkit's own task package registers when its module is imported, so only that
    package's modules are imported for it; nothing else a file names is imported."""
    module = class_path.rpartition(".")[0]
    if class_path not in TASKS and module.startswith("toolkit.tasks.") and module.count(".") == 2:
        import importlib.util

        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    if class_path not in TASKS:
        known = ", ".join(sorted(c.rsplit(".", 1)[1] for c in task_classes()))
        raise DataError(f"checkpoint {str(source)!r} names task class {class_path!r}, which is not one of the "
                        f"toolkit's tasks ({known}); refused")
    return TASKS[class_path]


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels


def _strip_model_prefix(key: str) -> str:
    return key[len("model."):] if key.startswith("model.") else key


def check_keyword_arguments(cls: type, kwargs: dict, key: str, *, skip: tuple[str, ...], hint: str) -> None:
    """Every key of `kwargs` must be a parameter of `cls` (unless it takes **kwargs): else one ConfigError naming the
    first unknown key and the ones `cls` takes."""
    import inspect

    params = inspect.signature(cls).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [name for name in params if name not in skip]
    for name, value in kwargs.items():
        if name not in params:
            raise ConfigError(f"{key}.{name}", value, f"{cls.__module__}.{cls.__qualname__} takes "
                              f"{', '.join(allowed)} (and _target_); {hint}")
