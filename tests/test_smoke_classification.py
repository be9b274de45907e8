"""End to end through `run(cfg)`: train on generated shapes, then eval and predict from the checkpoint."""

import json
from pathlib import Path

from toolkit.run import run


def test_train_eval_predict_round_trip(make_cfg, tmp_path):
    common = ["backbone.alpha=0.25", "data.resolution=64", "data.n_train=60", "data.n_val=24", "data.batch_size=12"]
    result = run(make_cfg(common + ["trainer.max_epochs=1"]))
    best = result["best_checkpoint"]
    assert Path(best).is_file()
    assert "val/top1" in result["metrics"]

    metrics = run(make_cfg(common + ["mode=eval", f"ckpt_path={best}"]))["metrics"]
    assert 0.0 <= metrics["val/top1"] <= 1.0
    assert json.loads((Path(result["output_dir"]) / "metrics.json").read_text())["val/top1"] == metrics["val/top1"]

    images = next(p for p in Path(tmp_path / "cache").glob("shapes_cls_*") if p.is_dir()) / "val" / "circle"
    pred = run(make_cfg(common + ["mode=predict", f"ckpt_path={best}", f"predict.input={images}"]))
    records = json.loads((Path(pred["output_dir"]) / "predictions.json").read_text())
    assert pred["count"] == len(records) == len(list(images.glob("*.jpg")))
    assert all(Path(f).is_file() for f in pred["files"])


def test_lightning_trial_settings_are_config_keys(make_cfg):
    """`trainer.fast_dev_run=true` (a smoke test of the setup) and `trainer.limit_train_batches=N` are plain keys,
    not `+trainer...` additions, and Lightning honours them."""
    common = ["backbone.alpha=0.25", "data.resolution=64", "data.n_train=48", "data.n_val=12", "data.batch_size=8"]
    smoke = run(make_cfg(common + ["trainer.fast_dev_run=true"]))
    assert smoke["global_step"] == 1 and not smoke["best_checkpoint"]  # one batch, nothing written
    limited = run(make_cfg(common + ["trainer.max_epochs=2", "trainer.limit_train_batches=2",
                                     "trainer.accumulate_grad_batches=2"]))
    assert limited["global_step"] == 2  # 2 epochs x 2 batches, one optimizer step per 2 batches
