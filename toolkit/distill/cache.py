"""Teacher caches: precomputed teacher outputs keyed by image path, written once and verified on load.

Two on-disk forms are read:
- `.pt` written by `mode=teacher_cache` (`torch.save` of a dict with `format`, `keys`, `outputs`, ...);
- `.npz` with arrays `keys` (image paths relative to the data root) and `outputs` (N x D floats), and
  optionally `output` ("logits", "probabilities" or "embedding"; unspecified: what the task needs):
  the way to bring a teacher from another framework.
"""

from __future__ import annotations

import hashlib
import logging
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from toolkit.errors import DataError
from toolkit.io import atomic_path, file_sha256, load_torch_file, torch_save_atomic

log = logging.getLogger(__name__)

CACHE_FORMAT = "mobilenet-toolkit/teacher-cache"
CACHE_VERSION = 1
OUTPUT_KINDS = ("logits", "probabilities", "embedding")
_SHOW = 5  # how many offending keys an error message names


def _examples(items: Sequence[str]) -> str:
    shown = ", ".join(repr(k) for k in list(items)[:_SHOW])
    return shown + (f" ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else "")


class TeacherCache:
    """Outputs of one teacher for a set of images: `keys[i]` -> `outputs[i]`."""

    def __init__(self, keys: Sequence[str], outputs: torch.Tensor, output: str | None, path: str | Path = "<memory>",
                 meta: dict | None = None, skipped: Sequence[str] = ()):
        self.path = str(path)
        outputs = torch.as_tensor(outputs, dtype=torch.float32)
        if output is not None and output not in OUTPUT_KINDS:
            raise DataError(f"teacher cache {self.path}: output kind {output!r} is not one of {', '.join(OUTPUT_KINDS)}")
        if outputs.ndim != 2:
            raise DataError(f"teacher cache {self.path}: outputs must be a 2-d array (images x values), "
                            f"found shape {tuple(outputs.shape)}")
        if len(keys) != outputs.shape[0]:
            raise DataError(f"teacher cache {self.path}: {len(keys)} keys but {outputs.shape[0]} output rows; "
                            "regenerate it with mode=teacher_cache")
        self.keys = [str(k) for k in keys]
        self.index = {k: i for i, k in enumerate(self.keys)}
        if len(self.index) != len(self.keys):
            seen: set[str] = set()
            dupes = [k for k in self.keys if k in seen or seen.add(k)]
            raise DataError(f"teacher cache {self.path}: duplicate keys {_examples(dupes)}")
        bad = (~torch.isfinite(outputs).all(dim=1)).nonzero().flatten().tolist()
        if bad:
            raise DataError(f"teacher cache {self.path}: non-finite outputs for {_examples([self.keys[i] for i in bad])}")
        self.outputs = outputs
        self.output = output
        self.meta = dict(meta or {})
        self.skipped = set(skipped)

    @property
    def dim(self) -> int:
        return int(self.outputs.shape[1])

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: Iterable[str]) -> torch.Tensor:
        keys = list(keys)
        try:
            rows = [self.index[k] for k in keys]
        except KeyError:
            missing = [k for k in keys if k not in self.index]
            raise DataError(f"teacher cache {self.path} has no output for {_examples(missing)}; regenerate it "
                            "with `python -m toolkit mode=teacher_cache teacher=... data=...` on this dataset") from None
        return self.outputs[rows]

    def verify(self, keys: Iterable[str], dim: int | None = None, outputs: Sequence[str] | None = None,
               run: dict | None = None) -> None:
        """Every image of this run has an output, of the expected width and kind, and the cache was made for this
        run's inputs: `run` holds what this run feeds the teacher (`resolution`, `mean`, `std`), compared with the
        cache's meta together with its image list and its teacher file's hash. Raise naming each difference."""
        problems = []
        if outputs is not None and self.output is not None and self.output not in outputs:
            problems.append(f"it holds {self.output} but this task needs {' or '.join(outputs)}")
        if dim is not None and self.dim != dim:
            problems.append(f"its outputs are {self.dim}-d but this task needs {dim}-d")
        keys = list(keys)
        missing = [k for k in keys if k not in self.index and k not in self.skipped]
        if missing:
            problems.append(f"{len(missing)} of the {len(keys)} images of this run are missing from it: {_examples(missing)}")
        problems += self.stale(keys, run or {})
        if problems:
            raise DataError(f"teacher cache {self.path} does not match this run: " + "; ".join(problems)
                            + ". Regenerate it with `python -m toolkit mode=teacher_cache teacher=<teacher> data=<this data>`.")
        unused = len(self.index) - len(set(keys) & set(self.index))
        log.info("teacher cache %s: %d images verified (%d-d %s)%s", self.path, len(keys), self.dim, self.output or "outputs",
                 f", {unused} cached images unused" if unused else "")

    def stale(self, keys: Sequence[str], run: dict) -> list[str]:
        """How the cache's recorded inputs differ from this run's (empty: none, or nothing recorded to compare)."""
        meta, differences = self.meta, []
        for key in ("resolution", "mean", "std"):
            if key in meta and run.get(key) is not None and _plain(meta[key]) != _plain(run[key]):
                differences.append(f"{key}: the cache was made with {_plain(meta[key])}, this run uses {_plain(run[key])}")
        if "images_sha256" in meta and keys and images_digest(keys) != meta["images_sha256"]:
            cached = set(self.keys) | self.skipped
            extra = sorted(cached - set(keys))
            differences.append(f"image list: the cache was made for {meta.get('images', len(cached))} images, this run "
                               f"has {len(keys)}" + (f"; not in this run: {_examples(extra)}" if extra else ""))
        teacher_file, recorded = meta.get("teacher_file"), meta.get("teacher_sha256")
        if teacher_file and recorded and Path(teacher_file).is_file() and file_sha256(teacher_file) != recorded:
            differences.append(f"teacher file: {teacher_file} has changed since the cache was made (sha256 "
                               f"{recorded[:12]}... then, {file_sha256(teacher_file)[:12]}... now)")
        return differences

    # ---- files ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Written whole or not at all (a temporary file renamed into place)."""
        path = Path(path)
        if path.suffix == ".npz":
            extra = {"output": np.array(self.output)} if self.output else {}
            with atomic_path(path) as tmp, tmp.open("wb") as f:  # a file object: np.savez would add ".npz" to a name
                np.savez(f, keys=np.array(self.keys), outputs=self.outputs.numpy(), **extra)
        else:
            torch_save_atomic({"format": CACHE_FORMAT, "version": CACHE_VERSION, "keys": self.keys, "outputs": self.outputs,
                               "output": self.output, "meta": self.meta, "skipped": sorted(self.skipped)}, path)
        self.path = str(path)
        return path

    @classmethod
    def from_object(cls, obj, path: str | Path) -> TeacherCache:
        """Build from what `torch.load` returned for a `.pt` cache."""
        if not (isinstance(obj, dict) and obj.get("format") == CACHE_FORMAT):
            raise DataError(f"{path}: not a teacher cache (expected a dict with format={CACHE_FORMAT!r})")
        missing = [k for k in ("keys", "outputs", "output") if k not in obj]
        if missing:
            raise DataError(f"teacher cache {path}: missing entries {missing}; regenerate it with mode=teacher_cache")
        if obj.get("version", 0) > CACHE_VERSION:
            raise DataError(f"teacher cache {path}: version {obj['version']} is newer than this toolkit reads ({CACHE_VERSION})")
        return cls(obj["keys"], obj["outputs"], obj["output"], path, obj.get("meta"), obj.get("skipped", ()))

    @classmethod
    def load(cls, path: str | Path) -> TeacherCache:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"teacher cache {path}: no such file; write one with `python -m toolkit mode=teacher_cache ...`")
        if path.suffix == ".npz":
            try:
                with np.load(path, allow_pickle=False) as z:
                    if "keys" not in z or "outputs" not in z:
                        raise DataError(f"teacher cache {path}: an .npz cache needs arrays 'keys' and 'outputs', "
                                        f"found {list(z.keys())}")
                    output = str(z["output"]) if "output" in z else None  # unspecified: the task's need decides
                    keys, outputs = [str(k) for k in z["keys"]], np.asarray(z["outputs"], dtype=np.float32)
            except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:  # truncated, not a zip, object arrays
                raise DataError(f"teacher cache {path}: not a readable .npz file ({e}); "
                                "write it again with `python -m toolkit mode=teacher_cache ...`") from e
            return cls(keys, torch.from_numpy(outputs), output, path)
        return cls.from_object(load_torch_file(path, what="teacher cache"), path)


def images_digest(keys: Iterable[str]) -> str:
    """One hash of an image list, whatever its order: what a cache records of the images it was made for."""
    return hashlib.sha256("\n".join(sorted(str(k) for k in keys)).encode()).hexdigest()


def _plain(value):
    """Values compared as plain lists of rounded numbers (a tuple from the data, a list from the file)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return round(value, 6) if isinstance(value, float) else value
