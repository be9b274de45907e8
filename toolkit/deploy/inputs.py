"""The image files among what a user names (files and folders), for `toolkit.deploy` and `mode=predict`.

A folder gives every file below it with an image extension (`toolkit.data.images.IMAGE_EXTENSIONS`, any case).
Nothing is left out silently: files without an image extension, and image-named entries that cannot be read as
files (a broken or looping link, a FIFO, which would block the reader forever), are counted and named in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from toolkit.data.images import IMAGE_EXTENSIONS, unreadable_reason
from toolkit.errors import DataError

#: how many left-out names the summary line shows
SHOWN = 5


@dataclass
class Inputs:
    images: list[Path] = field(default_factory=list)
    #: files below a named folder without an image extension
    not_images: list[Path] = field(default_factory=list)
    #: (path, why) of image-named entries that cannot be read as files
    unreadable: list[tuple[Path, str]] = field(default_factory=list)

    def summary(self) -> str:
        """'predicting 12 images; left out 3 files that are not images (.gif, .txt; ...)' (one line)."""
        return "; ".join([f"predicting {len(self.images)} image{'s' if len(self.images) != 1 else ''}",
                          *self.left_out()])

    def left_out(self) -> list[str]:
        parts = []
        if self.not_images:
            kinds = sorted({p.suffix.lower() or p.name for p in self.not_images})
            parts.append(f"left out {plural(len(self.not_images), 'file')} that {'is' if len(self.not_images) == 1 else 'are'} "
                         f"not an image ({', '.join(kinds[:SHOWN])}{' ...' if len(kinds) > SHOWN else ''}; images are "
                         f"{', '.join(IMAGE_EXTENSIONS)})")
        if self.unreadable:
            named = [f"{p} ({why})" for p, why in self.unreadable[:SHOWN]]
            parts.append(f"left out {plural(len(self.unreadable), 'unreadable file')}: {', '.join(named)}"
                         f"{' ...' if len(self.unreadable) > SHOWN else ''}")
        return parts


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def collect_inputs(specs: list[str], *, key: str = "input") -> Inputs:
    """The images of `specs` (files or folders), sorted per folder. A named file is taken whatever its extension
    (decoding it says whether it is an image); a name that does not exist, or a folder without images, is a
    DataError naming it (`key`: what the user calls the setting, e.g. `predict.input`)."""
    found = Inputs()
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            before = len(found.images)
            for p in sorted(path.rglob("*")):  # rglob does not follow links to folders: no loops
                if p.name.startswith(".") or p.is_dir():
                    continue
                if p.suffix.lower() not in IMAGE_EXTENSIONS:
                    found.not_images.append(p)
                elif (why := unreadable_reason(p)) is not None:
                    found.unreadable.append((p, why))
                else:
                    found.images.append(p)
            if len(found.images) == before:
                raise DataError(f"{key} {spec!r}: the folder holds no readable images (files ending in "
                                f"{', '.join(IMAGE_EXTENSIONS)}){''.join('; ' + p for p in found.left_out())}")
        elif (why := unreadable_reason(path)) is not None and path.is_symlink():
            raise DataError(f"{key} {spec!r}: {why}; point it at an image file")
        elif path.is_file():
            found.images.append(path)
        elif path.exists():
            raise DataError(f"{key} {spec!r}: not a regular file (a FIFO or device); give an image file or a folder")
        else:
            raise DataError(f"{key} {spec!r}: no such image file or folder")
    return found
