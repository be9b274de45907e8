"""Sort ImageNet's official flat validation folder into `val/<wnid>/` using its ground-truth labels.

    python -m toolkit.data.prepare_imagenet_val /data/imagenet/val --devkit ILSVRC2012_devkit_t12.tar.gz
    python -m toolkit.data.prepare_imagenet_val /data/imagenet/val --solution-csv LOC_val_solution.csv
    python -m toolkit.data.prepare_imagenet_val /data/imagenet/val --labels val_labels.txt   # `file wnid` lines

The devkit (an archive or its extracted folder) holds `data/meta.mat` (ILSVRC2012_ID -> wnid) and
`data/ILSVRC2012_validation_ground_truth.txt` (one ID per line, line i for ILSVRC2012_val_<i:08d>.JPEG).
Kaggle's `LOC_val_solution.csv` has `ImageId,PredictionString` rows whose first token is the wnid.
Files are moved (default), copied (--copy) or symlinked (--symlink); running it again is harmless.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import sys
import tarfile
from pathlib import Path

from toolkit.data.listfiles import read_csv_rows, read_lines
from toolkit.errors import DataError

log = logging.getLogger(__name__)

META = "data/meta.mat"
GROUND_TRUTH = "data/ILSVRC2012_validation_ground_truth.txt"


def _devkit_files(devkit: Path) -> tuple[bytes, bytes]:
    """(meta.mat bytes, ground-truth txt bytes) from an extracted devkit folder or its .tar(.gz) archive."""
    if devkit.is_dir():
        found = {}
        for rel in (META, GROUND_TRUTH):
            hits = [devkit / rel, *devkit.glob(f"*/{rel}")]
            path = next((h for h in hits if h.is_file()), None)
            if path is None:
                raise DataError(f"{devkit}: no {rel} inside (expected ILSVRC2012_devkit_t12/{rel})")
            found[rel] = path.read_bytes()
        return found[META], found[GROUND_TRUTH]
    if not devkit.is_file():
        raise DataError(f"--devkit {devkit}: no such file or folder (ILSVRC2012_devkit_t12.tar.gz or its extracted folder)")
    try:
        with tarfile.open(devkit) as tar:
            members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            missing = [rel for rel in (META, GROUND_TRUTH) if rel not in members]
            if missing:
                raise DataError(f"{devkit}: archive lacks {', '.join(missing)}")
            return tuple(tar.extractfile(members[rel]).read() for rel in (META, GROUND_TRUTH))  # type: ignore[return-value]
    except tarfile.TarError as e:
        raise DataError(f"{devkit}: not a readable tar archive ({e})") from e


def _plain_name(value: str, what: str, where: str) -> str:
    """`value` as one path component (an image file name or a wnid folder): no '/', '\\', '.', '..' or empty,
    so no labels line can move a file outside the validation folder."""
    if not value or "/" in value or "\\" in value or value in (".", "..") or "\0" in value:
        raise DataError(f"{where}: {what} {value!r} is not a plain name (no '/', '\\', '.' or '..'); every image "
                        "is sorted into <val_dir>/<wnid>/<file>, inside the validation folder")
    return value


def _add_label(labels: dict[str, str], lines: dict[str, int], name: str, wnid: str, where: str, number: int) -> None:
    """Record one `name -> wnid` line: names and wnids must be plain; a name given two different wnids names both lines."""
    _plain_name(name, "file name", where)
    _plain_name(wnid, "wnid", where)
    if name in labels and labels[name] != wnid:
        raise DataError(f"{where}: {name} is labelled {wnid}, but line {lines[name]} labels it {labels[name]}; keep one")
    labels[name], lines[name] = wnid, lines.get(name, number)


def labels_from_devkit(devkit: Path) -> dict[str, str]:
    """{val file name: wnid} from the ILSVRC-2012 devkit (the same parsing as torchvision's ImageNet)."""
    import scipy.io
    from scipy.io.matlab import MatReadError

    meta_bytes, truth_bytes = _devkit_files(devkit)
    try:
        synsets = scipy.io.loadmat(io.BytesIO(meta_bytes), squeeze_me=True)["synsets"]
        # leaf synsets (num_children == 0) are the 1000 classes; fields: ILSVRC2012_ID, WNID, words, ...
        id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except (MatReadError, ValueError, OSError, KeyError, TypeError, IndexError) as e:
        raise DataError(f"{devkit}: {META} is not the devkit's synset table ({type(e).__name__}: {e}); "
                        "download ILSVRC2012_devkit_t12.tar.gz again") from e
    try:
        truth = truth_bytes.decode("ascii").splitlines()
    except UnicodeDecodeError as e:
        line = truth_bytes[: e.start].count(b"\n") + 1
        raise DataError(f"{devkit}: {GROUND_TRUTH} line {line} is not a class id (byte {truth_bytes[e.start:e.start + 1]!r})") from None
    labels, lines = {}, {}
    for index, line in enumerate(truth, start=1):
        class_id = int(line) if line.strip().isdecimal() and len(line.strip()) <= 9 else None
        if class_id not in id_to_wnid:
            raise DataError(f"{devkit}: {GROUND_TRUTH} line {index} has class id {line.strip()[:40]!r}, not in {META}")
        _add_label(labels, lines, f"ILSVRC2012_val_{index:08d}.JPEG", id_to_wnid[class_id], f"{devkit}: {META}", index)
    return labels


def labels_from_solution_csv(path: Path) -> dict[str, str]:
    """{val file name: wnid} from Kaggle's LOC_val_solution.csv (`ImageId,PredictionString`)."""
    if not path.is_file():
        raise DataError(f"--solution-csv {path}: no such file (Kaggle's LOC_val_solution.csv)")
    rows = read_csv_rows(path, "solution CSV")
    header = rows[0] if rows else []
    if not {"ImageId", "PredictionString"} <= set(header):
        raise DataError(f"{path}: header {header}; expected ImageId,PredictionString")
    image_i, prediction_i = header.index("ImageId"), header.index("PredictionString")
    labels, lines = {}, {}
    for row_number, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path}: line {row_number} has {len(row)} fields; the header has {len(header)}")
        tokens = row[prediction_i].split()
        if not tokens:
            raise DataError(f"{path}: line {row_number} ({row[image_i]}) has an empty PredictionString")
        _add_label(labels, lines, f"{row[image_i]}.JPEG", tokens[0], f"{path}: line {row_number}", row_number)
    return labels


def labels_from_text(path: Path) -> dict[str, str]:
    """{val file name: wnid} from `file_name wnid` lines."""
    if not path.is_file():
        raise DataError(f"--labels {path}: no such file (lines of `ILSVRC2012_val_00000001.JPEG n01751748`)")
    labels, lines = {}, {}
    for number, line in enumerate(read_lines(path, "labels file"), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise DataError(f"{path}: line {number} is {line[:100]!r}; expected `file_name wnid`")
        _add_label(labels, lines, parts[0], parts[1], f"{path}: line {number}", number)
    if not labels:
        raise DataError(f"{path}: no `file_name wnid` lines")
    return labels


def sort_val_folder(val_dir: Path, labels: dict[str, str], action: str = "move", dry_run: bool = False) -> dict[str, int]:
    """Put each `val_dir/<file>` into `val_dir/<wnid>/<file>`. Returns counts; files already sorted are skipped.

    Every labelled image must be either in the flat folder or already in its wnid folder; otherwise a
    DataError names the missing files before anything is changed.
    """
    val_dir = Path(val_dir).expanduser()
    if not val_dir.is_dir():
        raise DataError(f"{val_dir}: no such folder (the extracted ILSVRC2012_img_val.tar)")
    todo, done, missing = [], 0, []
    inside = val_dir.resolve()
    for name, wnid in labels.items():
        _plain_name(name, "file name", "labels")  # callers may pass their own dict: checked again here
        _plain_name(wnid, "wnid", "labels")
        flat, sorted_path = val_dir / name, val_dir / wnid / name
        if (val_dir / wnid).exists() and not (val_dir / wnid).resolve().is_relative_to(inside):
            raise DataError(f"{val_dir / wnid}: links outside {val_dir} (to {(val_dir / wnid).resolve()}); "
                            "nothing is moved outside the validation folder. Remove the link and run again.")
        if sorted_path.exists():
            done += 1
        elif flat.is_file():
            todo.append((flat, sorted_path))
        else:
            missing.append(name)
    if missing:
        raise DataError(f"{val_dir}: {len(missing)} labelled image(s) not found, e.g. {', '.join(missing[:3])}. "
                        "Is this the complete extracted validation folder?")
    unlabelled = sorted(p.name for p in val_dir.iterdir() if p.is_file() and p.name not in labels)
    if unlabelled:
        log.warning("%s: %d file(s) have no label and stay where they are, e.g. %s", val_dir, len(unlabelled),
                    ", ".join(unlabelled[:3]))
    if not dry_run:
        for src, dst in todo:
            dst.parent.mkdir(exist_ok=True)
            if action == "move":
                shutil.move(src, dst)
            elif action == "copy":
                shutil.copy2(src, dst)
            else:
                os.symlink(src.resolve(), dst)
    return {"sorted": len(todo), "already_sorted": done, "unlabelled": len(unlabelled),
            "classes": len(set(labels.values()))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.data.prepare_imagenet_val", description=__doc__.split("\n")[0])
    parser.add_argument("val_dir", type=Path, help="the flat folder of ILSVRC2012_val_*.JPEG files")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--devkit", type=Path, help="ILSVRC2012_devkit_t12.tar.gz or its extracted folder")
    source.add_argument("--solution-csv", type=Path, help="Kaggle's LOC_val_solution.csv")
    source.add_argument("--labels", type=Path, help="a text file of `file_name wnid` lines")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--copy", action="store_true", help="copy instead of moving")
    how.add_argument("--symlink", action="store_true", help="symlink instead of moving")
    parser.add_argument("--dry-run", action="store_true", help="check and report, change nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.devkit:
            labels = labels_from_devkit(args.devkit.expanduser())
        elif args.solution_csv:
            labels = labels_from_solution_csv(args.solution_csv.expanduser())
        else:
            labels = labels_from_text(args.labels.expanduser())
        action = "copy" if args.copy else "symlink" if args.symlink else "move"
        counts = sort_val_folder(args.val_dir, labels, action, args.dry_run)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    verb = "would sort" if args.dry_run else {"move": "moved", "copy": "copied", "symlink": "linked"}[action]
    print(f"{args.val_dir}: {verb} {counts['sorted']} images into {counts['classes']} wnid folders "
          f"({counts['already_sorted']} already sorted, {counts['unlabelled']} unlabelled files left)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
