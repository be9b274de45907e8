"""A full disk, a read-only folder, a read-only empty cache: one line naming the place and the fix, exit
code 2, no traceback; a failed checkpoint save keeps the previous file whole and leaves no temporary file.

In-process tests inject the faults (an `OSError` from a write, the way torch reports it); the CLI tests make them
real: a read-only folder is a read-only tmpfs mounted in a private mount namespace (`unshare`) where the tests run
as root (root ignores permission bits), a folder without write permission otherwise; a full disk is a 1 MiB tmpfs
(root only)."""

from __future__ import annotations

import errno
import logging
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import FAST, assert_one_line_error, run_cli

from toolkit.callbacks import LastCheckpoint
from toolkit.checkpoint_io import AtomicCheckpointIO
from toolkit.disk_errors import quiet_log_file_errors, storage_error_message
from toolkit.io import torch_save_atomic

PROFILE = ["mode=profile", "profile.latency=false", "debug=cpu"]
TINY_TRAIN = [*FAST, "backbone.alpha=0.25", "data.resolution=32", "data.n_train=8", "data.n_val=8", "data.batch_size=4",
              "data.image_size=32", "trainer.max_epochs=1"]


def full_disk_save(obj, file, *args, **kwargs):
    """torch.save on a full disk: some bytes reach the file, then its write fails; torch raises a RuntimeError while
    handling the OSError (what torch 2.x does with a Python file object)."""
    file.write(b"partial checkpoint")
    try:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


# ---- the one line --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("code", "says"), [(errno.ENOSPC, "no space left on the disk of"),
                                            (errno.EDQUOT, "disk quota exceeded writing"),
                                            (errno.EROFS, "is on a read-only file system"),
                                            (errno.EACCES, "give this user access to it"),
                                            (errno.EPERM, "give this user access to it")])
def test_storage_errors_anywhere_in_the_chain_name_the_file_and_the_setting_of_its_folder(tmp_path, code, says):
    places = {"paths.cache_dir": tmp_path / "cache", "paths.output_dir": tmp_path / "logs" / "run",
              "paths.log_dir": tmp_path / "logs"}
    for file, hint in ((tmp_path / "cache" / "shapes" / "a.png", "paths.cache_dir (or TOOLKIT_CACHE_DIR)"),
                       (tmp_path / "logs" / "run" / "checkpoints" / "last.ckpt", "hydra.run.dir"),
                       (tmp_path / "logs" / "task", "paths.log_dir (or TOOLKIT_LOG_DIR)"),
                       (tmp_path / "elsewhere.json", "choose a location this user can write")):
        try:
            try:
                raise OSError(code, os.strerror(code), str(file))
            except OSError as inner:
                raise RuntimeError("wrapped by a library") from inner
        except RuntimeError as error:
            message = storage_error_message(error, places=places)
        no_access = code in (errno.EACCES, errno.EPERM)
        assert message.startswith(f"{file}:" if no_access else "") and says in message
        if no_access and file.name == "elsewhere.json":  # perhaps a file the run reads: no place to write suggested
            assert message == f"{file}: {os.strerror(code)}: give this user access to it"
        else:
            assert str(file) in message and hint in message and "\n" not in message


def test_a_write_error_without_a_file_name_names_the_run_folder_and_other_errors_are_not_storage_faults(tmp_path):
    error = OSError(errno.ENOSPC, "No space left on device")  # a failed write() on an open file
    assert f"no space left on the disk of {tmp_path}" in storage_error_message(error, folder=tmp_path)
    assert storage_error_message(FileNotFoundError(errno.ENOENT, "No such file", "x")) is None
    assert storage_error_message(ValueError("a bug")) is None


# ---- checkpoints on a full disk ------------------------------------------------------------------------------
def test_a_checkpoint_save_that_fills_the_disk_keeps_the_previous_file_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", full_disk_save)
    with pytest.raises(OSError) as caught:
        AtomicCheckpointIO().save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)  # the file, not a descriptor
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert "no space left on the disk of " + str(path) in storage_error_message(caught.value)


def test_last_checkpoint_names_last_ckpt_when_its_save_fails_and_removes_its_temporary_file(tmp_path, monkeypatch):
    """LastCheckpoint writes `.last.ckpt.<step>.tmp` then renames it: the error names the file the user knows."""
    callback = LastCheckpoint(str(tmp_path))
    torch_save_atomic({"step": 1}, callback.path)
    before = callback.path.read_bytes()
    monkeypatch.setattr(torch, "save", full_disk_save)
    trainer = SimpleNamespace(global_step=7, is_global_zero=True, loggers=[],
                              save_checkpoint=lambda path, weights_only: AtomicCheckpointIO().save_checkpoint({}, path))
    with pytest.raises(OSError) as caught:
        callback.save(trainer)
    assert caught.value.filename == str(callback.path) and caught.value.errno == errno.ENOSPC
    assert callback.path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# ---- the log file --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a file whose writes fail: no space)")
def test_a_log_file_that_cannot_be_written_warns_once_and_leaves(capsys):
    logger = logging.getLogger("toolkit.test_disk_faults")
    logger.propagate = False
    handler = logging.FileHandler("/dev/full")
    logger.addHandler(handler)
    try:
        quiet_log_file_errors(logger)
        for n in range(3):
            logger.warning("line %d", n)
    finally:
        logger.removeHandler(handler)
        handler.stream = None  # its buffered bytes can never be written: nothing left to flush on close
        handler.close()
    err = capsys.readouterr().err
    assert err.count("warning: cannot write the log file /dev/full") == 1 and "No space left" in err
    assert "Logging error" not in err and "Traceback" not in err and handler not in logger.handlers


# ---- through the CLI: real read-only folders and a real full disk --------------------------------------------
def _can_mount_privately() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


MOUNTS = _can_mount_privately()


def run_cli_on(folder: Path, args: list[str], cwd: Path, *, read_only: bool, env: dict | None = None,
               after: str = "") -> subprocess.CompletedProcess:
    """`python -m toolkit ARGS` with `folder` read-only (or, with `read_only=False`, a 1 MiB disk: root only).
    Root: a tmpfs mounted on `folder` in a private mount namespace, gone when the command ends (`after`: a shell
    command run there afterwards, its output appended to stdout). Otherwise: `folder` without write permission."""
    folder.mkdir(parents=True, exist_ok=True)
    if not MOUNTS:
        assert read_only, "a full disk needs a tmpfs"
        folder.chmod(0o555)
        try:
            return run_cli(args, cwd=cwd, env=env)
        finally:
            folder.chmod(0o755)
    options = "ro,size=1m" if read_only else "size=1m"
    command = (f"mount -t tmpfs -o {options} tmpfs {shlex.quote(str(folder))} || exit 99; "
               f"{shlex.quote(sys.executable)} -m toolkit {shlex.join(args)}; rc=$?; {after or 'true'}; exit $rc")
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", command], cwd=cwd,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, capture_output=True, text=True,
                          timeout=600)


def test_a_run_folder_in_a_read_only_folder_is_one_line_naming_it(tmp_path):
    locked = tmp_path / "locked"
    done = run_cli_on(locked, [*PROFILE, f"hydra.run.dir={locked}/run"], tmp_path, read_only=True)
    assert_one_line_error(done, f"{locked}/run", "hydra.run.dir")
    assert "Unable to configure handler" not in done.stderr


def test_a_read_only_log_dir_is_one_line_naming_paths_log_dir(tmp_path):
    locked = tmp_path / "locked"
    done = run_cli_on(locked, PROFILE, tmp_path, read_only=True, env={"TOOLKIT_LOG_DIR": str(locked)})
    assert_one_line_error(done, str(locked / "classification"), "paths.log_dir (or TOOLKIT_LOG_DIR)")


@pytest.mark.slow
def test_a_read_only_empty_cache_is_one_line_naming_paths_cache_dir(tmp_path):
    locked = tmp_path / "cache"
    done = run_cli_on(locked, [*TINY_TRAIN, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path, read_only=True,
                      env={"TOOLKIT_CACHE_DIR": str(locked)})
    assert_one_line_error(done, str(locked), "paths.cache_dir (or TOOLKIT_CACHE_DIR)")


@pytest.mark.slow
@pytest.mark.skipif(not MOUNTS, reason="a full disk is a small tmpfs: needs root and unshare")
def test_training_onto_a_full_disk_is_one_line_naming_the_checkpoint_and_leaves_no_temporary_file(tmp_path):
    """The issue's case gave 2-4 tracebacks (`No space left`, `basic_ios::clear: iostream error`). A 1 MiB disk
    holds the run's config and logs but not its first checkpoint (~4 MB)."""
    disk = tmp_path / "disk"
    done = run_cli_on(disk, [*TINY_TRAIN, f"hydra.run.dir={disk}/run"], tmp_path, read_only=False,
                      after=f"echo FILES; find {shlex.quote(str(disk))} -type f")
    assert_one_line_error(done, f"no space left on the disk of {disk}/run/checkpoints/", "hydra.run.dir")
    files = done.stdout.split("FILES\n", 1)[1].split()
    assert f"{disk}/run/.toolkit-run.json" in files and f"{disk}/run/csv/metrics.csv" in files
    assert not [f for f in files if f.endswith((".tmp", ".ckpt"))], files
