"""DetectionTask: the shared base of SSD and Faster R-CNN (training, COCO evaluation, predictions, init_from).

A subclass only implements `configure_models`, building `self.model`: a torchvision-style detector with
a `.backbone` (the registry Backbone, so `init_from` of a classification checkpoint maps by name) that
- in train mode takes `(images: list[3xHxW], targets: list[{"boxes", "labels", ...}])` and returns a
  dict of losses (their sum is the training loss, each is logged as `train/loss_<name>`);
- in eval mode takes `images` and returns `[{"boxes": xyxy in input pixels, "scores", "labels": 1..K}]`.
A subclass's `configure_models` passes `task.model` (`self.model_kwargs`) to its builder, whose signature declares
every model setting; its constructor, if it has one, takes only its own keyword arguments and forwards the rest.

Data comes from `toolkit.data.coco` (batches documented there). Validation maps detections back to
original pixels and file category ids, runs `CocoEvaluator` (faster-coco-eval or pycocotools against the
annotation file) over every rank's images at epoch end -- each image once: under DDP every rank evaluates a
disjoint, unpadded share (`toolkit.data.base.evaluation_sampler`) and results are merged by image id -- and
logs `val/map`, `val/map_50`, ... (all 12 COCO numbers; `val/map` picks the best checkpoint). The
latest detections and AP table are written to the run folder; `mode=eval` writes them next to metrics.json.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from toolkit.data.coco import boxes_to_original
from toolkit.detection.evaluator import CocoEvaluator, ap_table, results_from_detections, write_results_json
from toolkit.errors import DataError
from toolkit.io import write_text_atomic
from toolkit.predictions import DetectionFiles
from toolkit.tasks.base import BaseTask
from toolkit.tasks.inference import DetectorContract

log = logging.getLogger(__name__)


class DetectionTask(BaseTask):
    inference_contract = DetectorContract
    monitor = "val/map"
    monitor_mode = "max"
    resolution_multiple = 1
    data_kind = "detection"

    def __init__(
        self,
        *,
        num_classes: int = 80,
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
        eval_backend: str = "auto",
        predict_score_thresh: float = 0.3,
        **kwargs,
    ):
        """num_classes / class_names / category_ids: the foreground classes (from the data when training).
        eval_backend: COCO evaluation with faster_coco_eval, pycocotools or auto (the first installed).
        predict_score_thresh: `mode=predict` keeps detections scoring at least this. The rest: `BaseTask`."""
        self.num_classes = num_classes  # foreground classes; the detector adds the background (label 0)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(1, num_classes + 1)]
        self.category_ids = [int(c) for c in category_ids] if category_ids else list(range(1, num_classes + 1))
        if not len(self.class_names) == len(self.category_ids) == num_classes:
            raise DataError(f"num_classes={num_classes} but {len(self.class_names)} class names and "
                            f"{len(self.category_ids)} category ids were given")
        self.evaluator: CocoEvaluator | None = None
        super().__init__(**kwargs)

    # ---- model calls ----------------------------------------------------------------------------------
    def forward(self, images, targets=None):
        return self.model(images, targets) if targets is not None else self.model(images)

    def training_step(self, batch: dict, batch_idx: int):
        self.log_skipped(batch, "train")
        if not batch.get("images"):  # every sample of this batch was a skipped corrupt file
            return None
        losses = self.model(batch["images"], batch["targets"])
        loss = sum(losses.values())
        bs = len(batch["images"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def _detections(self, batch: dict) -> list[dict]:
        """Per image: boxes in original pixels, scores, labels 1..K (eval-mode model output mapped back)."""
        outputs = self.model(batch["images"])
        mapped = []
        for image, target, out in zip(batch["images"], batch["targets"], outputs, strict=True):
            boxes = boxes_to_original(out["boxes"].float(), image.shape[-2:], target["orig_size"])
            mapped.append({"boxes": boxes.cpu(), "scores": out["scores"].float().cpu(), "labels": out["labels"].cpu()})
        return mapped

    # ---- validation: COCO evaluation over the whole val set -------------------------------------------
    def _val_dataset(self):
        loaders = self.trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        dataset = loader.dataset
        if not hasattr(dataset, "coco"):
            raise DataError(f"{type(dataset).__name__}: detection validation needs a COCO-format dataset "
                            "(toolkit.data.coco.CocoDetectionDataset) to evaluate against")
        return dataset

    def on_validation_epoch_start(self) -> None:
        dataset = self._val_dataset()
        if list(dataset.categories.category_ids) != self.category_ids:
            raise DataError(f"{dataset.ann_file}: category ids {list(dataset.categories.category_ids)} differ from the "
                            f"model's {self.category_ids}; evaluate on data with the categories the model was trained on")
        self.evaluator = CocoEvaluator(dataset.coco, backend=self.hparams.eval_backend)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log_skipped(batch, "val")
        if not batch.get("images"):
            return
        results = []
        for target, det in zip(batch["targets"], self._detections(batch), strict=True):
            cats = [self.category_ids[int(label) - 1] for label in det["labels"]]
            results += results_from_detections(det["boxes"].numpy(), det["scores"].numpy(), cats, target["image_id"])
        self.evaluator.update(results, [t["image_id"] for t in batch["targets"]])

    def on_validation_epoch_end(self) -> None:
        stats = self.evaluator.compute(evaluate=self.trainer.is_global_zero)  # gathers on every rank
        stats = self.trainer.strategy.broadcast(stats, src=0)
        for name, value in stats.items():
            self.log(f"val/{name}", float(value), prog_bar=name in ("map", "map_50"), sync_dist=True)
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            out = Path(self.trainer.default_root_dir)
            self._write_detections(out, stats)
            if self.trainer.state.fn == "fit":  # a training epoch's line; eval and export verification print their own
                log.info("epoch %d: COCO mAP %.4f, mAP@0.5 %.4f (%d detections)", self.current_epoch, stats["map"],
                         stats["map_50"], len(self.evaluator.results))

    def _write_detections(self, out: Path, stats: dict[str, float]) -> list[Path]:
        names = dict(zip(self.category_ids, self.class_names, strict=True))
        det_path = write_results_json(self.evaluator.results, out / "detections_val.json")
        table = out / "ap_table.md"
        write_text_atomic(table, ap_table(stats, self.evaluator.per_class, names) + "\n```\n" + self.evaluator.summary + "```\n")
        return [det_path, table]

    def write_eval_outputs(self, metrics: dict[str, float], output_dir: Path) -> None:
        if self.evaluator is None:
            return
        from toolkit.console import format_table
        from toolkit.visualize import pr_curves_figure, save_figure

        stats = {k[len("val/"):]: v for k, v in metrics.items() if k.startswith("val/")}
        written = self._write_detections(Path(output_dir), stats)
        ev = self.evaluator
        if ev.precision_50 is None:
            return
        names = dict(zip(self.category_ids, self.class_names, strict=True))
        gt = {cid: len(ev.coco_gt.getAnnIds(catIds=[cid], imgIds=ev.image_ids, iscrowd=False)) for cid in ev.category_ids}
        rows = sorted(([names.get(cid, str(cid)), gt[cid], ev.per_class[cid], ev.per_class_50[cid]]
                       for cid in ev.category_ids if ev.per_class.get(cid, -1) >= 0), key=lambda r: (-r[2], r[0]))
        print(f"AP per class ({len(rows)} classes with ground truth, best first):")
        print(format_table(["class", "boxes", "AP", "AP50"], [[n, g, f"{a:.3f}", f"{a50:.3f}"] for n, g, a, a50 in rows]))
        labels = [names.get(cid, str(cid)) for cid in ev.category_ids]
        ap50 = [ev.per_class_50[cid] for cid in ev.category_ids]
        png = save_figure(pr_curves_figure(ev.recall_points, ev.precision_50, labels, ap50), Path(output_dir) / "pr_curves.png")
        for path in [*written, png]:
            print(f"wrote {path}")

    # ---- predict ---------------------------------------------------------------------------------------
    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        if not batch.get("images"):
            return []
        records = []
        for path, target, det in zip(batch["paths"], batch["targets"], self._detections(batch), strict=True):
            keep = det["scores"] >= self.hparams.predict_score_thresh
            h, w = target["orig_size"]
            records.append({"path": path, "width": int(w), "height": int(h), "detections": [
                {"box_xyxy": [round(v, 2) for v in box], "score": round(float(score), 4), "label": int(label),
                 "category_id": self.category_ids[int(label) - 1], "name": self.class_names[int(label) - 1]}
                for box, score, label in zip(det["boxes"][keep].tolist(), det["scores"][keep], det["labels"][keep], strict=True)
            ]})
        return records

    def prediction_files(self, output_dir: Path) -> DetectionFiles:
        """`predictions.json` (all images) plus, per image, `<n>_<stem>.json` and `<n>_<stem>.png` with boxes drawn."""
        from toolkit.detection.draw import draw_detections

        return DetectionFiles(output_dir, draw_detections,
                              categories=dict(zip(self.category_ids, self.class_names, strict=True)))

    # ---- fine-tuning --------------------------------------------------------------------------------------
    def load_init_weights(self, path: str | Path, *, strict: bool = True) -> dict[str, list[str]]:
        """Backbone (and every other layer whose shape fits) from the checkpoint; a class head sized for another
        class count stays freshly initialised, said in one log line."""
        report = super().load_init_weights(path, strict=strict)
        if report["shape_mismatch"]:
            layers = sorted({k.rsplit(".", 1)[0] for k in report["shape_mismatch"]})
            log.info("init_from %s: class count differs (%d classes here): class head re-initialised (%s); "
                     "backbone kept", path, self.num_classes, ", ".join(layers))
        return report

    def example_input(self, resolution: int, batch_size: int = 1) -> torch.Tensor:
        """A batched image tensor: detectors here accept it as well as a list of images."""
        return torch.randn(batch_size, 3, resolution, resolution)
