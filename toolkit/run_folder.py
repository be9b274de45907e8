"""A run folder is a run's alone: before any work a run claims its folder, or stops with one line.

A run claims a folder by creating the marker file `.toolkit-run.json` in it with `O_CREAT | O_EXCL`: the file
system lets exactly one of any number of processes create it, so of two runs started into one folder at the same
moment one proceeds and the other stops. The marker stays when the run ends: the folder is that run's from then on.

A folder can be claimed when it does not exist or is empty. Anything in it (a marker, a `.hydra/` record, checkpoints,
metrics, logs, any other file) means it holds another run's files, or files that are not a run's at all: the run is
refused, naming the folder, what it holds and the fix, and nothing in the folder is touched. The check runs in a
Hydra callback (`ClaimRunFolder`, conf/hydra/default.yaml) before Hydra writes its `.hydra/` record and opens the
log file, so the refused run does not even add to the other run's log.

- `python -m toolkit ...`: the Hydra run folder (`hydra.run.dir`, by default a new folder from `unique_dir`), and
  `paths.output_dir` when it is set to another folder (`claim_output_dir`, from `toolkit.__main__`).
- `-m` sweeps: the sweep folder (`hydra.sweep.dir`) is claimed when the sweep starts; each job then claims its own
  sub-folder (which holds only the job's own `.hydra/` and log, written by Hydra inside the sweep's claimed folder).
- Processes that Lightning (DDP) or a cluster launcher starts as ranks 1, 2... of a run share rank 0's folder:
  they claim nothing.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from toolkit.disk_errors import storage_error_message
from toolkit.errors import ToolkitError

#: the marker a run leaves in the folder it claimed
MARKER = ".toolkit-run.json"
#: environment variables launchers set to a process's rank; any of them non-zero: a further rank of one run
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
FIX = ("give another hydra.run.dir (or paths.output_dir), or leave hydra.run.dir unset for a new folder under "
       "paths.log_dir")


class RunFolderTaken(ToolkitError):
    """The folder a run would write into holds another run's files (or other files)."""


def claim_run_folder(folder: str | Path, *, own: tuple[str, ...] = ()) -> Path:
    """Create `folder` if needed and claim it for this process: refuse it when it holds anything but `own` (names of
    this run's own files, e.g. the `.hydra` record Hydra wrote into a sweep job's new folder) or when another process
    claims it first. Returns the folder."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RunFolderTaken(f"run folder {folder} is a file, not a folder: {FIX}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:  # a file where a parent folder should be
        raise RunFolderTaken(f"run folder {folder} cannot be created: {error.filename or folder} is not a folder: "
                             f"{FIX}") from error
    found = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name not in own)
    if found:
        raise RunFolderTaken(f"run folder {folder} holds another run's files ({_describe(folder, found)}); a run folder "
                             f"is a run's alone and nothing in it was changed: {FIX}")
    try:
        fd = os.open(folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:  # another process created it between our look and our claim: it was first
        raise RunFolderTaken(f"run folder {folder} was claimed by another run starting at the same moment "
                             f"({_describe(folder, [MARKER])}); nothing in it was changed: {FIX}") from None
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "argv": sys.argv}
    try:
        with os.fdopen(fd, "w") as marker:
            marker.write(json.dumps(record) + "\n")
    except OSError:
        (folder / MARKER).unlink(missing_ok=True)  # a full disk: leave no empty claim behind
        raise
    return folder


def _describe(folder: Path, found: list[str]) -> str:
    """What the folder holds, and who claimed it when its marker can be read."""
    shown = ", ".join(found[:6]) + (f" and {len(found) - 6} more" if len(found) > 6 else "")
    try:
        record = json.loads((folder / MARKER).read_text())
        return f"{shown}; claimed by pid {record['pid']} on {record['host']} at {record['started']}"
    except (OSError, ValueError, KeyError, TypeError):  # no marker (an older run, other files), or not written yet
        return shown


def is_further_rank() -> bool:
    """Whether this process is rank 1, 2... of a run a launcher started (Lightning's DDP re-runs the command line
    with `hydra.run.dir` set to rank 0's folder and `LOCAL_RANK` set)."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in RANK_VARIABLES)


def claim_output_dir(cfg: DictConfig) -> None:
    """`paths.output_dir` set to a folder other than the Hydra run folder (which `ClaimRunFolder` claimed): claim it too."""
    output_dir = (cfg.get("paths") or {}).get("output_dir")
    if not output_dir or is_further_rank():
        return
    try:
        hydra_dir = HydraConfig.get().runtime.output_dir
    except ValueError:  # not under Hydra: the caller of run(cfg) chose the folder
        return
    if Path(output_dir).absolute() != Path(hydra_dir).absolute():
        claim_run_folder(output_dir)


class ClaimRunFolder(Callback):
    """Hydra callback: claim the run's folder (`on_run_start`) or the sweep's folder (`on_multirun_start`) before Hydra
    writes into it, and each sweep job's own sub-folder (`on_job_start`). A refusal is one line and exit code 2
    (`HYDRA_FULL_ERROR=1` shows the traceback)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_further_rank():
            _claim_or_exit(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_further_rank():
            _claim_or_exit(config, "hydra.sweep.dir")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or is_further_rank():
            return
        own = tuple(name for name in (config.hydra.output_subdir, f"{config.hydra.job.name}.log") if name)
        _claim_or_exit(config, "hydra.runtime.output_dir", own=own)


def _claim_or_exit(config: DictConfig, key: str, own: tuple[str, ...] = ()) -> None:
    """Claim the folder `config.<key>`; stop the process on any error. Hydra turns an exception raised by a callback
    into a warning and goes on, which here would mean a run in a folder it did not claim: a refusal or a folder that
    cannot be written is one line and exit code 2, anything else a traceback and exit code 1."""
    HydraConfig.instance().set_config(config)  # the folder's `${hydra:...}` interpolations need it (run_job sets it later)
    folder = None
    try:
        folder = OmegaConf.select(config, key, throw_on_missing=True)  # resolves it: unique_dir creates the folder
        claim_run_folder(folder, own=own)
    except Exception as error:
        message = _cause_message(error, config, folder)
        if message is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            traceback.print_exc()
        if message is None:
            sys.exit(1)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _cause_message(error: BaseException, config: DictConfig, folder: str | None) -> str | None:
    """A refusal (also when OmegaConf wrapped it: the folder comes from a resolver), or a folder that cannot be written."""
    seen = error
    while seen is not None:
        if isinstance(seen, ToolkitError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    log_dir = OmegaConf.select(config, "paths.log_dir", default=None, throw_on_resolution_failure=False)
    return storage_error_message(error, places={"paths.output_dir": folder, "paths.log_dir": log_dir})
