"""A CSV metrics logger that a resumed run appends to (Lightning's deletes an existing metrics.csv)."""

from __future__ import annotations

import csv
import logging

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

log = logging.getLogger(__name__)


class AppendingExperimentWriter(ExperimentWriter):
    """Keeps the rows of an existing `metrics.csv`; on the first save, drops the old rows the resumed
    run logs again (step >= the first new step: they came after the checkpoint it resumed from)."""

    def _check_log_dir_exists(self) -> None:
        self._old_rows: list[dict] | None = None
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self._old_rows = list(csv.DictReader(f))

    def save(self) -> None:
        if not self.metrics:
            return
        if self._old_rows is not None:
            first_new = min(int(m["step"]) for m in self.metrics)
            kept = [r for r in self._old_rows if r.get("step") not in (None, "") and int(float(r["step"])) < first_new]
            dropped = len(self._old_rows) - len(kept)
            log.info("%s: appending after %d earlier rows%s", self.metrics_file_path, len(kept),
                     f" (dropped {dropped} logged after the resumed checkpoint)" if dropped else "")
            old_keys = {k for r in kept for k in r}
            self.metrics_keys = sorted(set(self.metrics_keys) | old_keys)
            self._record_new_keys()
            with self._fs.open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            self._old_rows = None
        super().save()


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, appending to an existing metrics file and flushing with every checkpoint,
    so the file on disk always holds at least what the newest checkpoint has seen."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.save()
