"""Can the ImageNet-style training loader keep up with the model? Images/s of decode + augment against training.

    python -m benchmarks.speed.loader_speed                      # 500x375 JPEGs (ImageNet's typical size), 224 crops
    python -m benchmarks.speed.loader_speed --images 128 --repeat 4 --workers 1 2 4

Writes `--images` generated JPEGs (smooth shapes plus sensor-like noise, quality 90: decoding cost like a photo's)
into a temporary class-folder tree and reads them with the real training pipeline (`ImageListDataset` and
`classification_train_transform`: decode, random-resized crop, flip, normalise, to tensor) through a DataLoader
with 1 and 2 worker processes, once per decoder of data/decode.py. Per decoder it also times decoding alone
(images per CPU-second, one thread). The model side is MobileNet V1 training steps (fp32 and bf16, channels_last)
in this process. Results: benchmarks/results/loader_speed.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from benchmarks.tools.results import write_results
from toolkit.data.decode import DECODERS, read_rgb
from toolkit.data.folder import ImageListDataset
from toolkit.data.transforms import classification_train_transform
from toolkit.heads import build_classifier


def write_photos(root: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[tuple[Path, int]]:
    """`n` JPEGs in two class folders: a smooth colour field with noise, so the entropy is a photo's."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        field = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        pixels = np.asarray(field).astype(np.int16) + rng.normal(0, 12, (size[1], size[0], 3)).astype(np.int16)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        samples.append((path, i % 2))
    return samples


class DecoderDataset(ImageListDataset):
    """The training dataset with the decoder under test."""

    def __init__(self, samples, transform, decoder: str):
        super().__init__(samples, transform)
        self.decoder = decoder

    def load_image(self, index: int):
        return read_rgb(self.samples[index][0], decoder=self.decoder)


def decode_rate(samples, decoder: str) -> float:
    """Images per CPU-second of decoding alone, one thread."""
    read_rgb(samples[0][0], decoder=decoder)
    start = time.process_time()
    for path, _ in samples:
        read_rgb(path, decoder=decoder)
    return len(samples) / (time.process_time() - start)


def loader_rate(samples, decoder: str, workers: int, batch_size: int, resolution: int) -> float:
    """Images/s through a DataLoader, from the first batch (workers started) to the last."""
    transform = classification_train_transform(resolution, (0.5,) * 3, (0.5,) * 3)
    loader = DataLoader(DecoderDataset(samples, transform, decoder), batch_size=batch_size, shuffle=True,
                        num_workers=workers, drop_last=True)
    start, images = None, 0
    for batch in loader:
        if start is None:
            start = time.perf_counter()
            continue
        images += batch["image"].shape[0]
    return images / (time.perf_counter() - start)


def training_rate(batch_size: int, resolution: int, precision: str, steps: int = 3) -> float:
    """Images/s of MobileNet V1 1.0 training steps (forward, backward, SGD) on in-memory batches."""
    torch.manual_seed(0)
    model = build_classifier({"name": "mobilenet_v1", "alpha": 1.0}, 1000).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch_size, 3, resolution, resolution).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch_size,))
    start = None
    for step in range(steps + 1):  # the first step warms up
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step == 0:
            start = time.perf_counter()
    return batch_size * steps / (time.perf_counter() - start)


def tables(results: dict) -> dict[str, str]:
    """The Markdown tables docs/performance.md quotes, rendered from a results file's `results`."""
    decode = ["| decoder | decode only, images per CPU-second |", "|---|---|"]
    decode += [f"| {d} | {r:.0f} |" for d, r in results["decode_images_per_cpu_s"].items()]
    loader = ["| decoder | workers | training loader images/s |", "|---|---|---|"]
    for key, rate in results["loader_images_per_s"].items():
        decoder, workers = key.split("/")
        loader.append(f"| {decoder} | {workers} | {rate:.1f} |")
    training = ["| MobileNet V1 1.0 training | images/s |", "|---|---|"]
    training += [f"| {p} | {r:.1f} |" for p, r in results["training_images_per_s"].items()]
    return {"decode": "\n".join(decode), "loader": "\n".join(loader), "training": "\n".join(training)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=96, help="distinct JPEG files")
    parser.add_argument("--repeat", type=int, default=3, help="each file appears this many times per pass")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--decoders", nargs="+", default=list(DECODERS), choices=DECODERS)
    args = parser.parse_args()
    results: dict = {"settings": vars(args), "decode_images_per_cpu_s": {}, "loader_images_per_s": {},
                     "training_images_per_s": {}}
    with tempfile.TemporaryDirectory(prefix="loader_speed_") as tmp:
        samples = write_photos(Path(tmp), args.images, (args.width, args.height)) * args.repeat
        print(f"{args.images} JPEGs of {args.width}x{args.height} x {args.repeat}, {args.resolution}px crops, "
              f"batch {args.batch_size}, {torch.get_num_threads()} torch threads in the main process")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        for decoder in args.decoders:
            rate = decode_rate(samples[: args.images], decoder)
            results["decode_images_per_cpu_s"][decoder] = rate
            print(f"decode only  {decoder:<12s} {rate:8.0f} images/CPU-s", flush=True)
        torch.set_num_threads(threads)
        for workers in args.workers:
            for decoder in args.decoders:
                rate = loader_rate(samples, decoder, workers, args.batch_size, args.resolution)
                results["loader_images_per_s"][f"{decoder}/{workers}"] = rate
                print(f"loader       {decoder:<12s} {workers} worker(s) {rate:8.1f} images/s", flush=True)
    for precision in ("fp32", "bf16"):
        rate = training_rate(args.batch_size, args.resolution, precision)
        results["training_images_per_s"][precision] = rate
        print(f"training     mobilenet_v1 1.0-{args.resolution} {precision}: {rate:8.1f} images/s", flush=True)
    fastest = max(results["training_images_per_s"].values())
    per_worker = {d: results["loader_images_per_s"][f"{d}/{min(args.workers)}"] / min(args.workers)
                  for d in args.decoders}
    results["workers_to_feed_training_here"] = {d: fastest / r for d, r in per_worker.items()}
    results["images_per_s_per_worker"] = per_worker
    for decoder, rate in per_worker.items():
        print(f"{decoder}: {rate:.0f} images/s per worker; this machine's fastest training ({fastest:.1f} images/s) "
              f"needs {fastest / rate:.2f} worker(s)")
    for name, table in tables(results).items():
        print(f"\n{name}:\n{table}")
    path = write_results("loader_speed", results)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
