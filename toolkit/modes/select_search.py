"""mode=select, accuracy phase: the feasible candidates train on the user's data with one short schedule, pruned by
successive halving (one Hyperband bracket): every candidate trains `rung_epochs`; the best 1/eta go on to
`rung_epochs * eta` epochs, resuming from their last checkpoint; and so on up to `search_epochs`.

Each rung is one Hydra multirun (`python -m toolkit -m mode=train +select_candidate=<names> ...`) whose launcher
(`select.launcher`, joblib by default) runs the candidates in parallel, each in a normal run folder
(`<selection>/rung<k>/runs/<job>`); a candidate is a config file of the generated group `select_candidate`
(`<selection>/rung<k>/configs/select_candidate/<name>.yaml`: its α, ρ and the checkpoint it resumes from). The
selection's state (`state.json`) is written after every rung, so a selection that was stopped resumes
(`select.resume=<its folder>`) without retraining what finished.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig

from toolkit.errors import ConfigError, ToolkitError
from toolkit.io import write_text_atomic
from toolkit.modes.select_cost import Candidate

log = logging.getLogger(__name__)

GROUP = "select_candidate"
#: command-line keys the selection decides for each job (the user's value would be the selection's, not a job's)
DECIDED = ("mode", "backbone.alpha", "data.resolution", "ckpt_path", "trainer.max_epochs", "paths.output_dir",
           "init_from")


class SelectionError(ToolkitError):
    """A rung's training failed: the launcher's last lines say why."""


def rung_schedule(first: int, last: int, eta: int) -> list[int]:
    """Epochs at each rung: first, first*eta, ... and `last` (the short schedule's end)."""
    epochs = [first]
    while epochs[-1] * eta < last:
        epochs.append(epochs[-1] * eta)
    if epochs[-1] < last:
        epochs.append(last)
    return epochs


def job_overrides(given: list[str]) -> list[str]:
    """The selection's command-line overrides every training job repeats: all but `select.*`, `hydra.*` and the
    keys the selection decides per job."""
    kept = []
    for override in given:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith(("select.", "hydra.", "hydra/")) or key in DECIDED or key == "select":
            continue
        kept.append(override)
    return kept


def write_candidate_configs(folder: Path, jobs: list[tuple[Candidate, str | None]]) -> Path:
    """One config file per candidate (`# @package _global_`): its α, ρ and the checkpoint it resumes from."""
    group = folder / GROUP
    group.mkdir(parents=True, exist_ok=True)
    for candidate, checkpoint in jobs:
        body = {"backbone": {"alpha": candidate.alpha}, "data": {"resolution": candidate.resolution},
                "ckpt_path": checkpoint}
        write_text_atomic(group / f"{candidate.name}.yaml", "# @package _global_\n" + yaml.safe_dump(body))
    return folder


def launch(*, overrides: list[str], names: list[str], configs: Path, sweep_dir: Path, epochs: int,
           settings: DictConfig, log_file: Path) -> None:
    """One Hydra multirun training `names` for `epochs` epochs through the configured launcher; its output goes to
    `log_file`. Returns when every job has ended; a failed job stops the selection with the launcher's last lines."""
    launcher = str(settings.launcher)
    command = [sys.executable, "-m", "toolkit", "-m", "mode=train", *overrides,
               f"+{GROUP}={','.join(names)}", f"hydra.searchpath=[file://{configs.resolve()}]",
               f"hydra.sweep.dir={sweep_dir}", f"trainer.max_epochs={epochs}", f"hydra/launcher={launcher}"]
    if launcher == "joblib":
        command.append(f"hydra.launcher.n_jobs={min(int(settings.n_jobs), len(names))}")
    command += list(settings.get("launcher_overrides") or [])
    log.info("select: %s", " ".join(command[1:]))
    with open(log_file, "ab") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HYDRA_FULL_ERROR": "0"},
                              check=False)
    if done.returncode != 0:
        tail = [line for line in log_file.read_text(errors="replace").splitlines() if line.strip()][-1:]
        raise SelectionError(f"select: training {', '.join(names)} failed (exit {done.returncode}): "
                             f"{tail[0].strip() if tail else 'no output'}; the whole output is in {log_file}")


def job_results(sweep_dir: Path) -> dict[str, dict[str, Any]]:
    """{candidate name: its run's result} from the multirun's job folders (`.hydra/overrides.yaml` names the job's
    candidate; `train_metrics.json` holds its score and checkpoints)."""
    import json

    results = {}
    for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra" / "overrides.yaml").is_file()):
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or []
        name = next((o.split("=", 1)[1] for o in overrides if o.startswith(f"+{GROUP}=")), None)
        metrics_file = job / "train_metrics.json"
        if name is None or not metrics_file.is_file():
            continue
        metrics = json.loads(metrics_file.read_text())
        last = job / "checkpoints" / "last.ckpt"
        score = metrics.get("best_score")
        if score is None:
            score = (metrics.get("metrics") or {}).get(metrics.get("monitor") or "")
        results[name] = {"metric": score, "monitor": metrics.get("monitor"), "run_dir": str(job),
                         "best_checkpoint": metrics.get("best_checkpoint") or None,
                         "last_checkpoint": str(last) if last.is_file() else None, "epoch": metrics.get("epoch")}
    return results


def ranked(candidates: list[Candidate], rung: str, mode: str) -> list[Candidate]:
    """Best metric at `rung` first; ties to the cheaper; candidates without a metric last."""
    sign = -1.0 if mode == "max" else 1.0

    def key(c: Candidate):
        metric = c.rungs.get(rung, {}).get("metric")
        return (metric is None, sign * metric if metric is not None else 0.0, c.cost_key())

    return sorted(candidates, key=key)


def survivors(alive: int, eta: int) -> int:
    """How many of `alive` candidates go on to the next rung: the best 1/eta, but none is pruned while at most `eta`
    are left (deciding between the last few on the shortest training is the riskiest cut for the least time saved:
    on generated data a 1-epoch rung dropped the candidate that was best after the full schedule)."""
    return alive if alive <= eta else max(1, math.ceil(alive / eta))


def successive_halving(*, candidates: list[Candidate], folder: Path, overrides: list[str], settings: DictConfig,
                       mode: str, save_state) -> tuple[list[Candidate], list[int]]:
    """Train and prune; returns (the candidates of the last rung, best first; the rung epochs). `save_state()` is
    called after every rung (the resume point)."""
    epochs = rung_schedule(int(settings.rung_epochs), int(settings.search_epochs), int(settings.eta))
    alive = list(candidates)
    for k, rung_epochs in enumerate(epochs):
        rung = str(k)
        todo = [c for c in alive if rung not in c.rungs]
        if todo:
            jobs = [(c, c.rungs[str(k - 1)]["last_checkpoint"] if k else None) for c in todo]
            for c, checkpoint in jobs:
                if k and not (checkpoint and Path(checkpoint).is_file()):
                    raise ConfigError("select.resume", settings.get("resume"), f"{c.name}'s checkpoint of rung {k - 1} "
                                      f"({checkpoint}) is gone; start the selection again without select.resume")
            rung_dir = folder / f"rung{k}"
            configs = write_candidate_configs(rung_dir / "configs", jobs)
            print(f"select: rung {k}: training {len(todo)} candidate(s) to epoch {rung_epochs}"
                  f"{' (' + str(len(alive) - len(todo)) + ' finished before)' if len(alive) > len(todo) else ''}")
            launch(overrides=overrides, names=[c.name for c in todo], configs=configs, sweep_dir=rung_dir / "runs",
                   epochs=rung_epochs, settings=settings, log_file=rung_dir / "launcher.log")
            results = job_results(rung_dir / "runs")
            for c in todo:
                if c.name not in results:
                    raise SelectionError(f"select: rung {k}: {c.name} wrote no train_metrics.json under "
                                         f"{rung_dir / 'runs'}; see {rung_dir / 'launcher.log'}")
                c.rungs[rung] = {"epochs": rung_epochs, **results[c.name]}
                c.state = "trained"
        order = ranked(alive, rung, mode)
        if k < len(epochs) - 1:
            keep = survivors(len(order), int(settings.eta))
            for c in order[keep:]:
                c.state = f"pruned_at_epoch_{rung_epochs}"
            alive = order[:keep]
        else:
            alive = order
        save_state()
    return alive, epochs
