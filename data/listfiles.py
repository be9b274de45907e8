"""Reading the list files datasets ship with (CSV, txt): every failure is a DataError naming the file and line.

`read_text` decodes UTF-8 (a BOM is dropped) and names the line of the first undecodable byte instead of a
bare `UnicodeDecodeError`; `path_under` refuses a listed path that would leave the dataset's root, so a list
line such as `../../etc/passwd` or `/etc/passwd` can neither be read nor written to. The check is on the
path as written (no symlink resolution): symlinked image farms inside the root keep working.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path, PurePosixPath

from toolkit.errors import DataError


def read_text(path: str | Path, what: str = "file") -> str:
    """The whole file as text, or a DataError naming it: missing, a folder, unreadable, or not UTF-8."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as e:
        raise DataError(f"{path}: {what} not found") from e
    except IsADirectoryError as e:
        raise DataError(f"{path}: is a folder, expected a {what}") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read the {what} ({e.strerror or e})") from e
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {raw[e.start:e.start + 1]!r} at offset {e.start}). "
                        f"Save the {what} as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None


def read_lines(path: str | Path, what: str = "file") -> list[str]:
    """The file's lines (without line ends), decoded as `read_text` does."""
    return read_text(path, what).splitlines()


def read_csv_rows(path: str | Path, what: str = "CSV file") -> list[list[str]]:
    """Every row of a CSV file as lists of strings (line i of the file is row i - 1 when no field spans lines)."""
    text = read_text(path, what)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        return list(reader)
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


def path_under(root: Path, listed: str, where: str) -> Path:
    """`root / listed`, refusing an absolute path or one whose `..` parts leave `root` (`where`: file:line)."""
    if not listed.strip():
        raise DataError(f"{where}: empty path; name a file relative to {root}")
    rel = PurePosixPath(listed.replace("\\", "/"))
    depth = 0
    for part in rel.parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            break
    if rel.is_absolute() or depth < 0:
        raise DataError(f"{where}: path {listed!r} leaves the dataset root {root}; list files name paths relative to "
                        "the root, without '..' above it or a leading '/'. Move the file under the root or fix the line.")
    return root / rel


class Duplicates:
    """The duplicate policy of list files: a key listed again with the same record is dropped and counted
    (`report()` logs how many), a key listed again with a different record is a DataError naming both lines."""

    def __init__(self, path: str | Path, what: str = "record"):
        self.path, self.what = path, what
        self.first: dict = {}
        self.dropped: list[tuple[int, int]] = []  # (first line, repeated line)

    def is_new(self, key, record, line: int) -> bool:
        """True for the first listing of `key`; False for an identical repeat (drop it); raises on a conflict."""
        if key not in self.first:
            self.first[key] = (record, line)
            return True
        first_record, first_line = self.first[key]
        if first_record != record:
            raise DataError(f"{self.path}:{line}: {self.what} {key} is listed twice (first on line {first_line}) with "
                            f"different values: {first_record!r} vs {record!r}. Keep one of the two lines.")
        self.dropped.append((first_line, line))
        return False

    def report(self, log: logging.Logger) -> None:
        if self.dropped:
            first, again = self.dropped[0]
            log.warning("%s: dropped %d identical duplicate line(s) (e.g. line %d repeats line %d)", self.path,
                        len(self.dropped), again, first)
