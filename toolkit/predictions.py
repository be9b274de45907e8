"""What `mode=predict` writes for each kind of task, taken one batch of records at a time.

A task's `predict_step` gives one record (a dict of plain values) per image; its `prediction_files(output_dir)`
picks one of these classes, and the prediction writer (`toolkit.callbacks.PredictionWriter`, or the torch-free
predictor of exported files, `toolkit.deploy.predict`) hands it each batch as it comes. Table files stream to
temporary names (`toolkit.io` streams) and are renamed into place by `close()`; `discard()` drops them after an
error. Nothing holds more than a batch of records, except the contact sheet's first `CONTACT_SHEET_IMAGES`
thumbnail paths and captions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from toolkit.io import (
    CsvFile,
    JsonArrayFile,
    NpyRowsFile,
    StreamedFile,
    TextLinesFile,
    json_text,
    write_json_atomic,
)
from toolkit.visualize import contact_sheet

#: how many images (the first ones, in input order) the contact sheet `predictions.png` shows
CONTACT_SHEET_IMAGES = 60


class PredictionFiles:
    """`predictions.json` (every record, a JSON array) and, where the task has a table, `predictions.csv`
    (`csv_header`, then `rows(record)` for each record). Subclasses add their pictures or replace the files."""

    #: the CSV's header, None: no CSV
    csv_header: list[str] | None = None
    #: whether the records go to predictions.json
    writes_json = True
    #: what `predictions` counts, in the summary line `mode=predict` prints
    unit = "predictions"

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.count = 0
        self.written: list[Path] = []  # whole files already in place (per-image pictures)
        self.streams: list[StreamedFile] = []
        self.json = self.stream(JsonArrayFile(self.output_dir / "predictions.json")) if self.writes_json else None
        self.csv = self.stream(CsvFile(self.output_dir / "predictions.csv", self.csv_header)) if self.csv_header else None

    @property
    def predictions(self) -> int:
        """What the summary line counts (`unit`): one per image unless a subclass counts more."""
        return self.count

    def stream(self, file: StreamedFile) -> StreamedFile:
        self.streams.append(file)
        return file

    def rows(self, record: dict) -> list[list]:
        """The CSV rows of one record."""
        return []

    def add(self, records: list[dict]) -> None:
        """One batch of records, in input order, written through to the (temporary) files."""
        self.write(records)
        for s in self.streams:
            s.file.flush()

    def write(self, records: list[dict]) -> None:
        for record in records:
            if self.json is not None:
                self.json.write(record)
            if self.csv is not None:
                self.csv.write_rows(self.rows(record))
            self.count += 1

    def close(self) -> list[Path]:
        """Put every file in place; return them all."""
        return [s.commit() for s in self.streams] + self.written

    def discard(self) -> None:
        for s in self.streams:
            s.discard()

    def __enter__(self) -> PredictionFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()


class ContactSheetFiles(PredictionFiles):
    """Also `predictions.png`: the first `CONTACT_SHEET_IMAGES` images, each captioned by `caption(record)`."""

    def __init__(self, output_dir: str | Path):
        super().__init__(output_dir)
        self.sheet: list[tuple[str, str]] = []

    def caption(self, record: dict) -> str:
        raise NotImplementedError

    def write(self, records: list[dict]) -> None:
        room = CONTACT_SHEET_IMAGES - len(self.sheet)
        self.sheet += [(r["path"], self.caption(r)) for r in records[:max(0, room)]]
        super().write(records)

    def close(self) -> list[Path]:
        files = super().close()
        return files + [contact_sheet([path for path, _ in self.sheet], [caption for _, caption in self.sheet],
                                      self.output_dir / "predictions.png", max_images=CONTACT_SHEET_IMAGES)]


class ClassificationFiles(ContactSheetFiles):
    """Top-k classes per image; the sheet shows the top class and its score."""

    csv_header = ["path", "rank", "label", "name", "score"]

    def rows(self, record: dict) -> list[list]:
        return [[record["path"], rank, p["label"], p["name"], f"{p['score']:.6f}"]
                for rank, p in enumerate(record["top_k"], start=1)]

    def caption(self, record: dict) -> str:
        return f"{record['top_k'][0]['name']} {record['top_k'][0]['score']:.2f}"


class GeolocationFiles(ContactSheetFiles):
    """The predicted location and the top cells per image; the sheet shows the location."""

    csv_header = ["path", "latitude", "longitude", "rank", "cell_token", "cell_score", "cell_lat", "cell_lon"]

    def rows(self, record: dict) -> list[list]:
        return [[record["path"], f"{record['lat']:.6f}", f"{record['lon']:.6f}", rank, c["token"], f"{c['score']:.6f}",
                 f"{c['lat']:.6f}", f"{c['lon']:.6f}"] for rank, c in enumerate(record["top_cells"], start=1)]

    def caption(self, record: dict) -> str:
        return f"{record['lat']:.2f},{record['lon']:.2f}"


class AttributeFiles(PredictionFiles):
    """One probability per attribute and image."""

    def __init__(self, output_dir: str | Path, attribute_names: list[str]):
        self.attribute_names = list(attribute_names)
        self.csv_header = ["path", *self.attribute_names]
        super().__init__(output_dir)

    def rows(self, record: dict) -> list[list]:
        return [[record["path"], *(f"{record['attributes'][n]:.4f}" for n in self.attribute_names)]]


class EmbeddingFiles(PredictionFiles):
    """`embeddings.npy` (one float32 row per image) and `embeddings_paths.txt` (the image of each row)."""

    writes_json = False

    def __init__(self, output_dir: str | Path):
        super().__init__(output_dir)
        self.matrix = self.stream(NpyRowsFile(self.output_dir / "embeddings.npy"))
        self.paths = self.stream(TextLinesFile(self.output_dir / "embeddings_paths.txt"))

    def write(self, records: list[dict]) -> None:
        self.matrix.write([r["embedding"] for r in records])
        for r in records:
            self.paths.write(r["path"])
        self.count += len(records)


class CocoImagesFile(StreamedFile):
    """The image list of a COCO annotation file, streamed: `{"images": [...], "categories": [...],
    "annotations": []}`. With `coco_results.json` it is what pycocotools reads (`COCO(images).loadRes(results)`)."""

    def __init__(self, path: str | Path):
        super().__init__(path, "w", encoding="utf-8")
        self.count = 0
        self.categories: dict[int, str] = {}

    def write(self, image: dict) -> None:
        self.file.write(('{"images": [\n' if self.count == 0 else ",\n") + "  " + json_text(image, indent=None))
        self.count += 1

    def finish(self) -> None:
        categories = [{"id": cid, "name": name} for cid, name in sorted(self.categories.items())]
        self.file.write(('{"images": [' if self.count == 0 else "\n") + "],\n"
                        f' "categories": {json_text(categories, indent=None)},\n "annotations": []}}\n')


class DetectionFiles(PredictionFiles):
    """`predictions.json` plus, per image, `predictions/<n>_<stem>.json` and `.png` with the boxes drawn by
    `draw(image_path, detections, out_png)` (`n`: the image's place in the input, from 0); and the detections in
    COCO's formats: `coco_results.json` (`[{"image_id": n, "category_id", "bbox": [x, y, width, height] in the
    image's pixels, "score"}]`) and `coco_images.json` (the images, `id` n with `file_name`, `width`, `height`, and
    the categories: `categories` {id: name} when given, else those detected)."""

    unit = "detections"

    def __init__(self, output_dir: str | Path, draw: Callable[[str, list[dict], Path], Path],
                 categories: dict[int, str] | None = None):
        super().__init__(output_dir)
        self.draw = draw
        self.folder = self.output_dir / "predictions"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.coco_results = self.stream(JsonArrayFile(self.output_dir / "coco_results.json"))
        self.coco_images = self.stream(CocoImagesFile(self.output_dir / "coco_images.json"))
        self.coco_images.categories.update(categories or {})
        self.detections = 0

    @property
    def predictions(self) -> int:
        return self.detections

    def write(self, records: list[dict]) -> None:
        for i, record in enumerate(records, start=self.count):
            stem = f"{i:05d}_{Path(record['path']).stem}"
            self.written += [write_json_atomic(self.folder / f"{stem}.json", record),
                             self.draw(record["path"], record["detections"], self.folder / f"{stem}.png")]
            image = {"id": i, "file_name": str(record["path"])}
            image.update({k: record[k] for k in ("width", "height") if k in record})
            self.coco_images.write(image)
            for det in record["detections"]:
                x1, y1, x2, y2 = det["box_xyxy"]
                self.coco_results.write({"image_id": i, "category_id": int(det["category_id"]),
                                         "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                         "score": det["score"]})
                self.coco_images.categories.setdefault(int(det["category_id"]), str(det.get("name", det["category_id"])))
            self.detections += len(record["detections"])
        super().write(records)


def summary_line(*, images: int, files: list[str | Path], output_dir: str | Path, predictions: int | None = None,
                 unit: str = "predictions") -> str:
    """The one line `mode=predict` prints: images, predictions, and where the files are ("predicted 4 images:
    7 detections; wrote predictions.json, coco_results.json, coco_images.json and 8 per-image files to DIR")."""
    out = Path(output_dir)
    top = [Path(f).name for f in files if Path(f).parent == out]
    nested = [f for f in files if Path(f).parent != out]
    listed = ", ".join(top) + (f" and {len(nested)} per-image files ({Path(nested[0]).parent.name}/)" if nested else "")
    counted = f": {predictions} {unit}" if predictions is not None and unit != "predictions" else ""
    return f"predicted {images} image{'s' if images != 1 else ''}{counted}; wrote {listed or 'nothing'} to {out}"
