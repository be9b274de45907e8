"""A full disk, a read-only folder, a file the user may not touch: one line naming the place and the fix.

These faults surface deep inside torch, Lightning or the logging module, as an `OSError` (or a `RuntimeError`
raised while handling one, e.g. torch's "unexpected pos" when its writer's `write()` failed). `storage_error_message`
finds the `OSError` anywhere in an exception's cause chain and says where it happened and which setting moves the
files elsewhere. `quiet_log_file_errors` keeps a log file that cannot be written from printing a traceback for every
log line: one warning, then the console alone carries the log.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

#: errno values that say "this place cannot take the file" (the disk, the folder, the rights), not "the program is wrong"
STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)

#: which setting moves the files of a folder elsewhere, by the config key of the folder
PLACE_HINTS = {
    "paths.cache_dir": "set paths.cache_dir (or TOOLKIT_CACHE_DIR) to a writable folder",
    "paths.output_dir": "give another hydra.run.dir, or set paths.log_dir (or TOOLKIT_LOG_DIR) to a writable folder",
    "paths.log_dir": "set paths.log_dir (or TOOLKIT_LOG_DIR), or hydra.run.dir, to a writable folder",
}


def storage_cause(error: BaseException | None) -> OSError | None:
    """The first `OSError` with a storage errno in `error`'s chain of causes and contexts."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_ERRNOS:
            return error
        error = error.__cause__ or error.__context__
    return None


def storage_error_message(error: BaseException, *, places: Mapping[str, str | Path | None] | None = None,
                          folder: str | Path | None = None) -> str | None:
    """One line for a storage fault behind `error`, or None when there is none.

    `places`: {config key: folder} of the run (`paths.cache_dir`, `paths.output_dir`...): the key whose folder holds
    the file names the setting to change. `folder`: named when the error carries no file name (a failed `write()`
    on an open file knows only its descriptor)."""
    cause = storage_cause(error)
    if cause is None:
        return None
    where = cause.filename or folder or "a file of this run"
    place = _place_hint(where, places or {})
    hint = place or "choose a location this user can write"
    reason = cause.strerror or os.strerror(cause.errno)
    if cause.errno == errno.ENOSPC:
        return f"no space left on the disk of {where} ({reason}): free space there, or {hint}"
    if cause.errno == errno.EDQUOT:
        return f"disk quota exceeded writing {where} ({reason}): free space in your quota, or {hint}"
    if cause.errno == errno.EROFS:
        return f"{where} is on a read-only file system: {hint}"
    # no access: maybe a file the run reads (an image, an annotation file), so a place to write is advice only for a folder of the run
    return f"{where}: {reason}: give this user access to it" + (f", or {place}" if place else "")


def _place_hint(where: str | Path, places: Mapping[str, str | Path | None]) -> str | None:
    target = Path(where).expanduser().absolute()
    for key in ("paths.cache_dir", "paths.output_dir", "paths.log_dir"):  # the innermost folder first
        folder = places.get(key)
        if folder and target.is_relative_to(Path(folder).expanduser().absolute()):
            return PLACE_HINTS[key]
    return None


def quiet_log_file_errors(logger: logging.Logger | None = None) -> None:
    """A log file handler of `logger` (the root logger: Hydra's `<run>/toolkit.log`) that fails to write says so once
    and leaves; without this, `logging` prints a traceback for every later line (a full disk: one per line)."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handleError = _drop_handler_on_error(logger, handler)  # type: ignore[method-assign]


def _drop_handler_on_error(logger: logging.Logger, handler: logging.FileHandler):
    def handle_error(record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        logger.removeHandler(handler)
        print(f"warning: cannot write the log file {handler.baseFilename} ({error}); the rest of the log goes to the "
              "console only", file=sys.stderr)

    return handle_error
