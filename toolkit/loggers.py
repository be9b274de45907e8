"""A CSV metrics logger whose file on disk always holds at least what the newest checkpoint has seen.

Every run, resumed ones included, writes into a new run folder of its own (a resumed run's `resumed_from.json`
names the checkpoint it came from), so Lightning's CSVLogger never meets another run's metrics.csv."""

from __future__ import annotations

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, flushing with every checkpoint: a run killed after a checkpoint still has the
    metrics of every step that checkpoint holds."""

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self.save()
