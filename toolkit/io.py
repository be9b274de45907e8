"""Files in and out, safely.

In: a file a user names is read as data, never as code. `load_torch_file` unpickles with `weights_only=True`;
a file that needs more (arbitrary Python objects, so possibly code) is refused with one line naming the file and
the opt-in that loads it anyway (`trust_file=true`), which the user gives only for files they trust.

Out: every file the toolkit writes appears whole or not at all. It is written under a temporary name in the same
folder and renamed over the target (`os.replace` is atomic on one file system), so an interrupted run never leaves
a half-written report, checkpoint, cache or cell file behind for the next run to read.
"""

from __future__ import annotations

import contextvars
import csv
import hashlib
import json
import math
import os
import pickle
import re
import struct
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from toolkit.errors import DataError

#: the config key that lets a run unpickle a user-named file in full (see docs/security.md)
TRUST_OPT_IN = "trust_file=true"


class UnsafeFileError(DataError):
    """A file would need a full (code-running) unpickle to load, and the user did not opt in."""


#: whether this run said `trust_file=true`; `run(cfg)` sets it for the job, so loaders deep inside a backbone or a
#: teacher (which never see the config) honour the one top-level key without it being threaded through every call
_TRUST_FILE: contextvars.ContextVar[bool] = contextvars.ContextVar("trust_file", default=False)


@contextmanager
def trust_file(trust: bool) -> Iterator[None]:
    """The config key `trust_file`, set for the block: `load_torch_file(trust=None)` and `require_trust` follow it
    (`trust_file_enabled()` reads it)."""
    token = _TRUST_FILE.set(bool(trust))
    try:
        yield
    finally:
        _TRUST_FILE.reset(token)


def trust_file_enabled() -> bool:
    return _TRUST_FILE.get()


def require_trust(path: str | Path, what: str, why: str, opt_in: str = TRUST_OPT_IN) -> None:
    """Refuse to open a file whose format is code (TorchScript, torch.export `.pt2`) unless the run trusts files."""
    if not trust_file_enabled():
        raise UnsafeFileError(f"{what} {str(path)!r} is {why}: loading it runs code from the file; it was not loaded. "
                              f"If you trust this file, load it with {opt_in} (docs/security.md).")


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def plain_file_mode() -> int:
    """The permission bits `open(path, "w")` gives a new file under the current umask (mkstemp's are 0600, which
    would hide a run's files from colleagues on a shared server)."""
    try:  # Linux says it without changing it (no window in which another thread creates files under a wrong mask)
        status = Path("/proc/self/status").read_text()
        mask = int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)  # elsewhere reading the umask means setting it: put it straight back
        os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once the block ends without an error it is renamed to `path`.

    On an error the temporary file is removed and `path` keeps whatever it held before."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, plain_file_mode())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def strict_json(obj: Any) -> Any:
    """`obj` with every NaN or infinite float replaced by None: JSON has no NaN, and strict readers (browsers,
    `jq`, most languages' parsers) refuse the `NaN` that Python's json module writes by default."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(v) for v in obj]
    return obj


def json_text(obj: Any, indent: int | None = 2, default=None) -> str:
    """Strict JSON (`strict_json`) of `obj`; `default` converts what json cannot (e.g. `float` for tensors)."""
    if default is not None:  # convert first, so converted values are made strict too
        obj = json.loads(json.dumps(obj, default=default))
    return json.dumps(strict_json(obj), indent=indent, allow_nan=False)


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json_text(obj, indent) + "\n")


def save_image_atomic(image, path: str | Path) -> Path:
    """Save a PIL image; the format follows `path`'s suffix (the temporary name has none)."""
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=Image.registered_extensions()[path.suffix.lower()])
    return path


class StreamedFile:
    """A file written piece by piece under a temporary name beside `path`: `commit()` renames it into place, whole;
    `discard()` removes it. Until the commit nothing exists under the final name, so a run interrupted midway
    leaves no partial file for a reader to mistake for a finished one."""

    def __init__(self, path: str | Path, mode: str = "w", **open_kwargs: Any):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.fchmod(fd, plain_file_mode())
        self.tmp = Path(tmp_name)
        self.file = os.fdopen(fd, mode, **open_kwargs)

    def finish(self) -> None:
        """Write whatever closes the format (a JSON array's bracket, a header that needs the final count)."""

    def commit(self) -> Path:
        self.finish()
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


class JsonArrayFile(StreamedFile):
    """A JSON array written one element at a time; the file reads exactly as `json.dumps(items, indent=2)` and a
    newline, so a streamed file and one written from a list in memory are the same bytes."""

    def __init__(self, path: str | Path):
        super().__init__(path, "w", encoding="utf-8")
        self.count = 0

    def write(self, item: Any) -> None:
        # an element at depth 1: json.dumps(indent=2) lines, each shifted two spaces (strings hold no raw newline)
        element = "\n".join("  " + line for line in json_text(item, indent=2).split("\n"))
        self.file.write(("[\n" if self.count == 0 else ",\n") + element)
        self.count += 1

    def finish(self) -> None:
        self.file.write("\n]\n" if self.count else "[]\n")


class JsonLinesFile(StreamedFile):
    """One JSON value per line (JSON Lines): what each DDP rank writes before rank 0 merges them."""

    def __init__(self, path: str | Path):
        super().__init__(path, "w", encoding="utf-8")

    def write(self, item: Any) -> None:
        self.file.write(json_text(item, indent=None) + "\n")


class CsvFile(StreamedFile):
    """A CSV file: `header`, then rows as they come."""

    def __init__(self, path: str | Path, header: list[str]):
        super().__init__(path, "w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(header)

    def write_rows(self, rows: Iterable[list]) -> None:
        self.writer.writerows(rows)


class TextLinesFile(StreamedFile):
    """A text file of one line per item."""

    def __init__(self, path: str | Path):
        super().__init__(path, "w", encoding="utf-8")

    def write(self, line: str) -> None:
        self.file.write(line + "\n")


class NpyRowsFile(StreamedFile):
    """A float32 `.npy` matrix written a few rows at a time: the rows go raw to the temporary file and `finish`
    copies them, in chunks, behind the `.npy` header that needs the final row count, so no more than one chunk of
    rows is ever in memory. Reads exactly as `np.save` of the whole matrix (shape `(0,)` when no row came)."""

    CHUNK_ROWS = 4096

    def __init__(self, path: str | Path):
        super().__init__(path, "wb")
        self.rows, self.width = 0, None

    def write(self, rows: Any) -> None:
        import numpy as np

        rows = np.asarray(rows, dtype=np.float32)
        if len(rows) == 0:
            return
        if self.width is None:
            self.width = rows.shape[1]
        elif rows.shape[1] != self.width:
            raise ValueError(f"{self.path}: rows of width {rows.shape[1]} after rows of width {self.width}")
        self.file.write(np.ascontiguousarray(rows).tobytes())
        self.rows += len(rows)

    def commit(self) -> Path:
        import numpy as np

        self.file.close()
        shape = (self.rows, self.width) if self.rows else (0,)
        with atomic_path(self.path) as npy_tmp:
            matrix = np.lib.format.open_memmap(npy_tmp, mode="w+", dtype=np.float32, shape=shape)
            if self.rows:
                raw = np.memmap(self.tmp, dtype=np.float32, mode="r", shape=shape)
                for start in range(0, self.rows, self.CHUNK_ROWS):
                    matrix[start:start + self.CHUNK_ROWS] = raw[start:start + self.CHUNK_ROWS]
                del raw
            matrix.flush()
            del matrix
        self.tmp.unlink(missing_ok=True)
        return self.path


def merge_json_lines(paths: Iterable[str | Path], key: str = "index") -> Iterator[dict]:
    """The objects of several JSON Lines files, each already sorted by `key`, as one stream sorted by `key`;
    an object whose `key` an earlier one had is dropped. One line per file is in memory at a time: how rank 0
    joins the parts DDP ranks wrote (each rank's share of a dataset is in increasing index order)."""
    import heapq

    def objects(path: Path) -> Iterator[dict]:
        with path.open(encoding="utf-8") as f:
            for line in f:
                yield json.loads(line)

    last = None
    for obj in heapq.merge(*(objects(Path(p)) for p in paths), key=lambda o: o[key]):
        if obj[key] != last:
            last = obj[key]
            yield obj


def torch_save_atomic(obj: Any, path: str | Path) -> Path:
    import torch

    with atomic_path(path) as tmp:
        try:
            with open(tmp, "wb") as file:  # a Python file: a failed write (full disk) is an OSError, not C++'s iostream error
                torch.save(obj, file)
        except (RuntimeError, OSError) as error:
            failed = error if isinstance(error, OSError) else error.__context__
            if isinstance(failed, OSError) and failed.errno is not None:  # name the file, not a descriptor
                raise OSError(failed.errno, failed.strerror, str(path)) from error
            raise
    return Path(path)


def load_torch_file(path: str | Path, *, trust: bool | None = None, mmap: bool = False, what: str = "file",
                    opt_in: str = TRUST_OPT_IN) -> Any:
    """`torch.load` of a user-named file: tensors, containers and plain values only, unless `trust`.

    `trust=None`: what the run said (the `trust_file` key, see `trust_file()`). `what` says what the file is for in the
    error ("teacher checkpoint"), `opt_in` names the setting that sets `trust` for this caller. A file that is not
    a torch file at all gets a DataError naming it too."""
    import torch

    if trust is None:
        trust = trust_file_enabled()
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{what} {str(path)!r}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust, mmap=mmap or None)
    except pickle.UnpicklingError as e:
        needs = None if trust else refused_object(str(e))
        if needs is None:  # not a pickle torch reads (junk, a truncated file): no object to blame
            raise DataError(f"{what} {str(path)!r}: not a readable torch file ({_weights_only_detail(e)})") from e
        # never torch's own advice (re-run with weights_only=False, or allowlist the object): that runs the code
        raise UnsafeFileError(
            f"{what} {str(path)!r} asks for the Python object {needs}, beyond tensors and plain values, and "
            f"unpickling it can run code: it was refused and the file was not loaded. {opt_in} would unpickle the "
            "file in full and run code from it: give it only for a file you made or trust (docs/security.md).") from e
    # what torch's readers raise on damaged bytes (a truncated zip, a flipped byte in a legacy file's header)
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError, struct.error,
            AssertionError) as e:
        raise DataError(f"{what} {str(path)!r}: not a readable torch file ({_first_line(e)})") from e


#: how torch's weights-only unpickler names what a file asks for, in each of its refusals (torch 2.6+):
#: "Unsupported global: GLOBAL io.open was not an allowed global", "Trying to load unsupported GLOBAL posix.system
#: whose module posix is blocked", "... classes allowlisted via `add_safe_globals` but got <class 'x.Y'>",
#: "Trying to call reduce for unrecognized function <built-in function system>"
_REFUSED_OBJECT = (
    re.compile(r"\bGLOBAL\s+(\S+)"),
    re.compile(r"but got <class '([^']+)'>"),
    re.compile(r"reduce for unrecognized function (.+?)(?: which belongs to .*)?$", re.MULTILINE),
    re.compile(r"instantiate unsupported class (\S+)"),
)


def refused_object(message: str) -> str | None:
    """The Python object (`posix.system`, `io.open`) torch's weights-only unpickler refused, from its message;
    None when the refusal names none (the file is not a pickle at all, or is damaged)."""
    for pattern in _REFUSED_OBJECT:
        match = pattern.search(message)
        if match:
            return match[1].strip().rstrip(".")[:120]
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def _weights_only_detail(error: BaseException) -> str:
    """What torch's weights-only unpickler found wrong, without torch's advice around it: its message tells the
    user to re-run with `weights_only=False` (or to allowlist the object), which is exactly what runs a crafted
    file's code, so no line that mentions weights_only (or the allowlist) is ever repeated."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))
    for line in text.splitlines():
        line = re.sub(r"^\s*(Weights only load failed\.|\(\d\))?\s*", "", line)
        line = re.sub(r"^.*WeightsUnpickler error:\s*", "", line)
        line = re.split(r"\s*Please use `torch\.serialization", line)[0].strip()
        if line and not re.search(r"weights.only|safe_globals|trust|documentation of torch\.load", line, re.IGNORECASE):
            return line[:200]
    return "torch's safe unpickler could not read it"
