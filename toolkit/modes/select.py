"""mode=select: the best α × ρ MobileNet for the configured task and data under a latency (size, mult-adds) budget
on a target runtime (docs/select.md).

1. Cost (no training, `toolkit.modes.select_cost`): every candidate of the grid exported to `select.runtime` and
   timed there at batch 1 (or its latency read from a device's table, `select.latency_table`); candidates over a
   budget are dropped, with a table saying why. `select.export_only=true` stops here, with the files for a device.
2. Accuracy (`toolkit.modes.select_search`): the feasible candidates train on the data, pruned by successive
   halving, each rung a Hydra multirun through a launcher plugin.
3. The answer: the best metric within budget (ties to the cheaper), fine-tuned to the full schedule
   (`select.final_epochs`), exported in `export.formats` (and `select.runtime`) with mode=export's verification;
   `selection.json`, a table and `selection.png` in the run folder.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from toolkit.errors import ConfigError
from toolkit.io import json_text, write_text_atomic
from toolkit.modes.common import build_datamodule, output_dir
from toolkit.modes.select_cost import (
    BUDGETS,
    Candidate,
    apply_budgets,
    apply_latency_table,
    candidate_config,
    default_grid,
    label,
    machine,
    measure,
    nothing_fits,
    rank_correlation,
    read_latency_table,
    runtime_version,
)
from toolkit.modes.select_report import final_metric, plot, table
from toolkit.modes.select_search import (
    job_overrides,
    job_results,
    launch,
    rung_schedule,
    successive_halving,
    write_candidate_configs,
)

log = logging.getLogger(__name__)

SELECTION_FILE = "selection.json"
#: how far above the budget the winner's re-measured latency may be before the report says so (timing noise)
REMEASURE_TOLERANCE = 0.10


class Selection:
    """The selection's record: written to `selection.json` after every step (the resume point, and the answer)."""

    def __init__(self, cfg: DictConfig, out: Path, candidates: list[Candidate]):
        self.cfg, self.out, self.candidates = cfg, out, candidates
        self.info: dict[str, Any] = {}

    def save(self, *, complete: bool = False) -> Path:
        settings = self.cfg.select
        payload = {
            "complete": complete,
            "task": str(self.cfg.task._target_), "backbone": str(self.cfg.backbone.get("name")),
            "runtime": str(settings.runtime), "runtime_version": runtime_version(str(settings.runtime)),
            "threads": settings.get("threads"), "machine": machine(),
            "budgets": {k: settings.get(k) for k in BUDGETS},
            **self.info,
            "candidates": [{**c.to_json(), "label": label(self.cfg, c), "metric": final_metric(c)}
                           for c in self.candidates],
        }
        return write_text_atomic(self.out / SELECTION_FILE, json_text(payload, indent=2, default=float) + "\n")


def load_data(cfg: DictConfig):
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def previous_selection(cfg: DictConfig, candidates: list[Candidate], epochs: list[int]) -> None:
    """`select.resume=<folder>`: take each candidate's finished rungs from that selection (its `selection.json`, and
    jobs of its last rung that finished after the record was written); nothing finished is trained again."""
    folder = cfg.select.get("resume")
    if not folder:
        return
    path = Path(folder).expanduser() / SELECTION_FILE
    if not path.is_file():
        raise ConfigError("select.resume", folder, f"no {SELECTION_FILE} there; give the run folder of the selection to resume")
    try:
        record = json.loads(path.read_text())
        old = {c["name"]: c for c in record["candidates"]}
        old_epochs = record["schedule"]["rung_epochs"]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError("select.resume", folder, f"{path} is not a selection record ({e})") from e
    if record.get("runtime") != str(cfg.select.runtime) or old_epochs[:len(epochs)] != epochs[:len(old_epochs)]:
        raise ConfigError("select.resume", folder, f"that selection ran on {record.get('runtime')} with rungs at epochs "
                          f"{old_epochs}; resume with the same select.runtime and schedule, or start anew")
    for c in candidates:
        rungs = (old.get(c.name) or {}).get("rungs") or {}
        c.rungs = {k: v for k, v in rungs.items() if int(k) < len(epochs) and epochs[int(k)] == v.get("epochs")}
    for k, rung_epochs in enumerate(old_epochs):  # jobs that finished in a rung the record did not reach
        runs = Path(folder).expanduser() / f"rung{k}" / "runs"
        if not runs.is_dir() or k >= len(epochs) or epochs[k] != rung_epochs:
            continue
        finished = job_results(runs)
        for c in candidates:
            if str(k) not in c.rungs and c.name in finished and (k == 0 or str(k - 1) in c.rungs):
                c.rungs[str(k)] = {"epochs": rung_epochs, **finished[c.name]}
    reused = sum(len(c.rungs) for c in candidates)
    print(f"select: resuming {folder}: {reused} finished candidate-rung(s) reused, not trained again")


def select(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    settings = cfg.select
    runtime = str(settings.runtime)
    alphas, resolutions = default_grid(cfg)
    candidates = [Candidate(alpha=a, resolution=r) for a in alphas for r in resolutions]
    selection = Selection(cfg, out, candidates)
    datamodule = load_data(cfg)

    # ---- 1. cost ----
    export_only = bool(settings.export_only)
    print(f"select: cost of {len(candidates)} candidates in {runtime} (threads {settings.get('threads') or 'default'})")
    with contextlib.redirect_stdout(io.StringIO()) as quiet:  # one export table per candidate: in the log only
        measure(cfg, datamodule, candidates, out / "candidates", use_cache=not export_only)
    log.debug("%s", quiet.getvalue())
    if export_only:
        for c in candidates:
            c.state = "exported"
        selection.info.update({"export_only": True, "files": str(out / "candidates")})
        path = selection.save(complete=True)
        print(table(candidates, runtime=runtime))
        files = list(dict.fromkeys(c.file for c in candidates))  # one file per width where it takes every size
        print(f"select: {len(files)} file(s) for the {len(candidates)} candidates in {out / 'candidates'}; "
              "on the device run\n"
              f"  python -m toolkit.deploy --benchmark {out / 'candidates'} --out latency_table.json"
              + (f" --threads {settings.threads}" if settings.get("threads") else "")
              + f"\nthen mode=select ... select.latency_table=latency_table.json (record: {path})")
        return {"selection": str(path), "output_dir": str(out), "files": files}
    source = "measured here"
    if settings.get("latency_table"):
        apply_latency_table(read_latency_table(settings.latency_table), settings.latency_table, candidates, runtime)
        source = f"device table {settings.latency_table}"
    feasible = apply_budgets(cfg, candidates)
    rho = rank_correlation(candidates)
    selection.info.update({
        "latency_source": source,
        "rank_correlation": {"spearman_madds_vs_latency": rho, "candidates": len(candidates),
                             "ranking_used": "measured latency (" + source + "): budgets and ties are decided on it; "
                                             "mult-adds are reported, not used"}})
    print(table(candidates, runtime=runtime))
    print(f"select: Spearman rank correlation of mult-adds and latency over the {len(candidates)} candidates: "
          + ("n/a" if rho is None else f"{rho:.3f}") + f"; the ranking used is the measured latency ({source})")
    if not feasible:
        selection.save(complete=True)
        raise nothing_fits(cfg, candidates)
    print(f"select: {len(feasible)} of {len(candidates)} candidates within budget")

    # ---- 2. accuracy ----
    epochs = rung_schedule(int(settings.rung_epochs), int(settings.search_epochs), int(settings.eta))
    final_epochs = int(settings.final_epochs if settings.get("final_epochs") is not None else cfg.trainer.max_epochs)
    selection.info["schedule"] = {"rung_epochs": epochs, "eta": int(settings.eta), "final_epochs": final_epochs,
                                  "launcher": str(settings.launcher)}
    previous_selection(cfg, feasible, epochs)
    given = command_line()
    overrides = job_overrides(given)
    task_mode = getattr(_task_class(cfg), "mode", "max")
    survivors, _ = successive_halving(candidates=feasible, folder=out, overrides=overrides, settings=settings,
                                      mode=task_mode, save_state=selection.save)
    winner = survivors[0]
    winner.state = "chosen"
    last = winner.rungs[str(len(epochs) - 1)]
    print(table(candidates, runtime=runtime, metric_name=last.get("monitor") or "metric"))
    print(f"select: chosen {label(cfg, winner)}: {last.get('monitor')} {last.get('metric'):.4f} after "
          f"{last['epochs']} epochs, {winner.latency_ms:.3f} ms in {runtime}")

    # ---- 3. the answer: the full schedule, then export ----
    final = last
    if final_epochs > last["epochs"]:
        final_dir = out / "final"
        configs = write_candidate_configs(final_dir / "configs", [(winner, last["last_checkpoint"])])
        print(f"select: fine-tuning {winner.name} to epoch {final_epochs}")
        launch(overrides=overrides, names=[winner.name], configs=configs, sweep_dir=final_dir / "runs",
               epochs=final_epochs, settings=settings, log_file=final_dir / "launcher.log")
        final = {"epochs": final_epochs, **job_results(final_dir / "runs")[winner.name]}
    selection.info["winner"] = {"name": winner.name, "label": label(cfg, winner), "alpha": winner.alpha,
                                "resolution": winner.resolution, "latency_ms": winner.latency_ms, **final}
    selection.save()
    exported = export_winner(cfg, winner, final, out / "export")
    selection.info["winner"]["export"] = exported
    pictures = plot(candidates, out / "selection.png", metric_name=last.get("monitor") or "metric", runtime=runtime,
                    latency_budget=settings.get("latency_ms"), winner=winner, latency_source=source)
    selection.info["plot"] = str(pictures)
    path = selection.save(complete=True)
    print(f"select: selection written to {path}; pictures {pictures}")
    return {"selection": str(path), "output_dir": str(out), "winner": selection.info["winner"],
            "objective": final.get("metric")}


def _task_class(cfg: DictConfig):
    import hydra.utils

    return hydra.utils.get_class(cfg.task._target_)


def command_line() -> list[str]:
    """This selection's command-line overrides (each training job repeats them)."""
    from toolkit.modes.common import _command_line_overrides

    given = _command_line_overrides()
    if given is None:
        raise ConfigError("mode", "select", "the accuracy phase launches training jobs through Hydra: run it as "
                          "`python -m toolkit mode=select ...` (select.export_only=true works from run(cfg) too)")
    return given


def export_winner(cfg: DictConfig, winner: Candidate, final: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The winner's checkpoint exported in `export.formats` plus `select.runtime`, verified by mode=export; its
    latency in the selection's runtime re-measured against the budget."""
    from toolkit.modes.export import export

    runtime = str(cfg.select.runtime)
    config = candidate_config(cfg, winner.alpha, winner.resolution, folder, mode="export")
    checkpoint = final.get("best_checkpoint") or final.get("last_checkpoint")
    with open_dict(config):
        config.ckpt_path = checkpoint
        formats = list(OmegaConf.to_container(config.export.formats))
        config.export.formats = formats + ([runtime] if runtime not in formats else [])
        config.export.threads = cfg.select.get("threads")
    report = export(copy.deepcopy(config))
    entry = report["export"]["formats"].get(runtime) or {}
    remeasured = entry.get("latency_ms_batch1")
    budget = cfg.select.get("latency_ms")
    result = {"checkpoint": checkpoint, "export_file": report["export_file"], "remeasured_latency_ms": remeasured,
              "files": {fmt: e["file"] for fmt, e in report["export"]["formats"].items()}}
    if budget is not None and remeasured is not None and not cfg.select.get("latency_table"):
        result["meets_budget"] = remeasured <= budget * (1 + REMEASURE_TOLERANCE)
        if not result["meets_budget"]:
            log.warning("select: the winner re-measured at %.3f ms in %s, over the %.3g ms budget by more than %d %% "
                        "(a busy machine?): check it with python -m toolkit.deploy --benchmark %s", remeasured,
                        runtime, budget, int(100 * REMEASURE_TOLERANCE), entry.get("file"))
    return result
