"""Prepare Stanford Dogs from the official tar files into the layout `data=stanford_dogs` reads.

    python -m toolkit.data.prepare_stanford_dogs --images images.tar --annotations annotation.tar \\
        --lists lists.tar --out ~/datasets/stanford_dogs

images.tar holds `Images/<wnid>-<breed>/*.jpg`, annotation.tar `Annotation/<wnid>-<breed>/<image id>`, and
lists.tar `file_list.mat`, `train_list.mat`, `test_list.mat` (extracted into `<out>/lists/`). The result is
checked by reading both split lists, and a summary is printed.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
from pathlib import Path, PurePosixPath

from toolkit.data.stanford_dogs import StanfordDogsDataModule, read_mat_list
from toolkit.errors import DataError

LIST_FILES = ("file_list.mat", "train_list.mat", "test_list.mat")


def _open(path: Path, what: str) -> tarfile.TarFile:
    if not path.is_file():
        raise DataError(f"{path}: {what} not found; download it from http://vision.stanford.edu/aditya86/ImageNetDogs/")
    try:
        return tarfile.open(path)
    except tarfile.TarError as e:
        raise DataError(f"{path}: not a readable tar file ({e}); download {what} again") from e


def _safe_members(tar: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    members = []
    for m in tar.getmembers():
        p = PurePosixPath(m.name)
        if p.is_absolute() or ".." in p.parts or m.issym() or m.islnk():
            raise DataError(f"{path}: refusing member {m.name!r} (absolute path, '..' or link)")
        members.append(m)
    return members


def extract_tree(tar_path: Path, top: str, out: Path, what: str) -> int:
    """Extract the members under `top/` (e.g. Images/) of the download `what` into `out`; returns how many files."""
    with _open(tar_path, what) as tar:
        members = [m for m in _safe_members(tar, tar_path) if PurePosixPath(m.name).parts[:1] == (top,)]
        files = [m for m in members if m.isfile()]
        if not files:
            raise DataError(f"{tar_path}: no files under {top}/ (is this the right tar? expected {top}/<wnid>-<breed>/...)")
        tar.extractall(out, members=members, filter="data")
    return len(files)


def extract_lists(tar_path: Path, out: Path) -> list[Path]:
    """Extract the three .mat lists (top level or under lists/ in the tar) into `out/lists/`."""
    dest = out / "lists"
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    with _open(tar_path, "lists.tar") as tar:
        by_name = {PurePosixPath(m.name).name: m for m in _safe_members(tar, tar_path) if m.isfile()}
        missing = [n for n in LIST_FILES if n not in by_name]
        if missing:
            raise DataError(f"{tar_path}: lacks {missing} (found {sorted(by_name)}); expected the official lists.tar")
        for name in LIST_FILES:
            (dest / name).write_bytes(tar.extractfile(by_name[name]).read())
            written.append(dest / name)
    return written


def prepare(images: Path, annotations: Path | None, lists: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    n_images = extract_tree(images, "Images", out, "images.tar")
    n_annotations = extract_tree(annotations, "Annotation", out, "annotation.tar") if annotations else 0
    extract_lists(lists, out)
    dm = StanfordDogsDataModule(root=str(out), crop_to_box=annotations is not None, num_workers=0)
    train, val = dm.scan()  # reads both lists and checks every listed file is there
    return {"root": str(out), "breeds": len(dm.classes), "images": n_images, "annotations": n_annotations,
            "train": len(train), "test": len(val), "all_listed": len(read_mat_list(out / "lists" / "file_list.mat")[0])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.data.prepare_stanford_dogs", description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True, help="images.tar (Images/<wnid>-<breed>/*.jpg)")
    parser.add_argument("--annotations", type=Path, help="annotation.tar (Annotation/...); needed for data.crop_to_box=true")
    parser.add_argument("--lists", type=Path, required=True, help="lists.tar (file_list.mat, train_list.mat, test_list.mat)")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create (use it as data.root)")
    args = parser.parse_args(argv)
    try:
        summary = prepare(args.images.expanduser(), args.annotations.expanduser() if args.annotations else None,
                          args.lists.expanduser(), args.out.expanduser())
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"Stanford Dogs ready in {summary['root']}: {summary['breeds']} breeds, {summary['train']} train / "
          f"{summary['test']} test images ({summary['images']} image files, {summary['annotations']} annotations). "
          f"Use: python -m toolkit task=fine_grained data=stanford_dogs data.root={summary['root']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
