"""PredictionWriter: `mode=predict`'s records go to disk batch by batch (Lightning's `BasePredictionWriter`)."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from toolkit.io import JsonLinesFile, merge_json_lines
from toolkit.predictions import PredictionFiles

#: records rank 0 hands the task's files at a time while it merges the DDP ranks' parts
MERGE_CHUNK = 256


class PredictionWriter(BasePredictionWriter):
    """Writes each predict batch's records as it comes, through the files the task picks
    (`pl_module.prediction_files(output_dir)`, a `toolkit.predictions.PredictionFiles`). With
    `trainer.predict(..., return_predictions=False)` no more than one batch of records is in memory, and a run that
    stops midway leaves nothing under the final file names (the temporary files are removed).

    Under DDP (`trainer=ddp`) each rank streams its share, each record tagged with its place in `images`, to a JSON
    Lines part in the output folder; when every rank is done, rank 0 merges the parts in input order into the task's
    files and deletes them (Lightning's pattern for prediction on several devices). The files are then the same as
    one process writes."""

    def __init__(self, output_dir: str | Path, images: Sequence[str | Path]):
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.images = images
        self.files: PredictionFiles | None = None
        self.part: JsonLinesFile | None = None
        #: after the loop: the files written (rank 0) and how many records they hold
        self.written: list[Path] = []
        self.count = 0
        #: what the files counted for the summary line: (number, unit), e.g. (7, "detections")
        self.predictions: tuple[int, str] = (0, "predictions")
        #: the most records handed over at once: one batch (tests check that nothing accumulates)
        self.largest_batch = 0

    def part_path(self, rank: int) -> Path:
        return self.output_dir / f".predictions.rank{rank}.jsonl"

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.world_size > 1:
            self.part = JsonLinesFile(self.part_path(trainer.global_rank))
        else:
            self.files = pl_module.prediction_files(self.output_dir)

    def write_on_batch_end(self, trainer: Trainer, pl_module: LightningModule, prediction: Any,
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        records = list(prediction or [])
        self.largest_batch = max(self.largest_batch, len(records))
        if self.part is None:
            self.files.add(records)
            return
        if not batch_indices and records:
            raise RuntimeError("predict under DDP needs each batch's sample indices (a torch DataLoader)")
        # a record's place in the input, by its path: a batch holds fewer records than indices when
        # data.skip_corrupt=true dropped an unreadable image
        places = {str(self.images[i]): i for i in batch_indices or ()}
        for record in records:
            self.part.write({"index": places[record["path"]], "record": record})

    def on_predict_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.part is None:
            self.predictions = (self.files.predictions, self.files.unit)
            self.count, self.written = self.files.count, self.files.close()
            self.files = None
            return
        self.part.commit()
        self.part = None
        trainer.strategy.barrier("prediction_parts_written")
        if trainer.is_global_zero:
            parts = [self.part_path(rank) for rank in range(trainer.world_size)]
            with pl_module.prediction_files(self.output_dir) as files:
                merged = (obj["record"] for obj in merge_json_lines(parts))
                while chunk := list(islice(merged, MERGE_CHUNK)):
                    files.add(chunk)
                self.predictions = (files.predictions, files.unit)
                self.count, self.written = files.count, files.close()
            for part in parts:
                part.unlink()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self.files is not None:
            self.files.discard()
            self.files = None
        if self.part is not None:
            self.part.discard()
            self.part = None
