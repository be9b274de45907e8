"""Distil a wide MobileNet teacher into alpha 0.25 on generated faces; print quality and speed of both.

    python -m benchmarks.learning.face_distillation [--part attributes|embeddings|both] [--threads 2] [--out DIR]

For each part, on the generated data (`data=celeba_synthetic` / `data=faces_synthetic`, real formats):
1. the teacher (MobileNet alpha 0.5, `--teacher-alpha`) trains on the labels (`teacher=none`);
2. the student (alpha 0.25) distils from the teacher's checkpoint online (labels unused);
3. attributes only: the same student distils from a `mode=teacher_cache` file instead (timed);
4. a supervised alpha 0.25 baseline trains on the labels;
then `mode=eval` measures each checkpoint (mean AP over the 40 attributes; verification accuracy,
TAR@FAR and AUC on the generated LFW-format pairs), and latency/mult-adds compare student and teacher.
Every figure comes from the toolkit's own commands (`run(cfg)`), nothing is hard-coded. Writes
benchmarks/results/<--results>.json; `tables()` renders the tables docs/faces.md quotes, and `bf16_parity.py`
compares `--precision` pairs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from benchmarks.tools.results import write_results
from benchmarks.tools.runner import QUIET, run_toolkit


def timed_run(overrides: list[str], run_dir: Path, record: list[str] | None = None) -> dict:
    """Run one job; its result has `cpu_s` (wall time means little on a shared machine) and, with `record`, `epochs`."""
    result, _ = run_toolkit([*QUIET, *overrides], run_dir, record=record)
    return result


def evaluate(data: list[str], checkpoint: str, run_dir: Path) -> dict[str, float]:
    """`mode=eval` of a checkpoint: its metrics."""
    return {k: float(v) for k, v in timed_run([*data, "mode=eval", f"ckpt_path={checkpoint}"], run_dir)["metrics"].items()}


def speed(task: str, alpha: float, resolution: int) -> dict:
    """Latency (batch 1 and 32, fastest of the repeats, ms), mult-adds and params of the task's model."""
    import torch

    from toolkit.profiling.counting import count_model
    from toolkit.profiling.latency import measure_latency
    from toolkit.tasks.face_attributes import FaceAttributesTask
    from toolkit.tasks.face_embedding import FaceEmbeddingTask

    backbone = {"name": "mobilenet_v1", "alpha": alpha}
    model = (FaceAttributesTask(backbone=backbone) if task == "attributes"
             else FaceEmbeddingTask(backbone=backbone, embedding_dim=128)).model
    model.eval()
    out = {"mult_adds_M": count_model(model, torch.randn(1, 3, resolution, resolution)).mult_adds / 1e6,
           "params_M": sum(p.numel() for p in model.parameters()) / 1e6}
    for batch in (1, 32):  # the fastest of the repeats: the least disturbed by other processes on a shared CPU
        out[f"ms_b{batch}"] = measure_latency(model, torch.randn(batch, 3, resolution, resolution), torch.device("cpu"),
                                              budget_s=3.0)["min_ms"]
    return out


def attributes(args, out: Path) -> dict:
    data = ["task=face_attributes", "data=celeba_synthetic", f"data.n_train={args.attr_train}", f"data.n_val={args.attr_val}",
            f"data.resolution={args.resolution}", "data.batch_size=32", f"data.num_workers={args.workers}", *common(args)]
    record = ["val/mAP"]
    teacher = timed_run([*data, "teacher=none", f"backbone.alpha={args.teacher_alpha}",
                         f"trainer.max_epochs={args.teacher_epochs}"], out / "attr_teacher", record)
    ckpt = teacher["best_checkpoint"]
    student = [*data, "backbone.alpha=0.25", f"trainer.max_epochs={args.student_epochs}"]
    online = timed_run([*student, "teacher=path", f"teacher.path={ckpt}"], out / "attr_student_online", record)
    cache = timed_run(["mode=teacher_cache", *data, "teacher=path", f"teacher.path={ckpt}"], out / "attr_cache")
    cached = timed_run([*student, "teacher=path", f"teacher.path={cache['cache_file']}"], out / "attr_student_cached", record)
    baseline = timed_run([*student, "teacher=none"], out / "attr_baseline", record)
    models = []
    for key, name, result in (("teacher", f"teacher {args.teacher_alpha:g} (labels)", teacher),
                              ("student_online", "student 0.25 distilled online", online),
                              ("student_cached", "student 0.25 distilled from cache", cached),
                              ("baseline", "student 0.25 on labels (baseline)", baseline)):
        m = evaluate(data, result["best_checkpoint"], out / f"eval_{key}")
        models.append({"key": key, "model": name, "mAP": m["val/mAP"], "mean_accuracy": m["val/mean_accuracy"],
                       "train_cpu_s": result["cpu_s"], "epochs": result["epochs"]})
    return {"models": models, "cache_cpu_s": cache["cpu_s"], "speed": speed_rows("attributes", args)}


def embeddings(args, out: Path) -> dict:
    data = ["task=face_embedding", "data=faces_synthetic", f"data.n_identities={args.ids}",
            f"data.n_test_identities={args.test_ids}", f"data.images_per_identity={args.images_per_id}",
            f"data.pairs_per_fold={args.pairs_per_fold}", f"data.resolution={args.resolution}", "data.batch_size=32",
            f"data.num_workers={args.workers}", *common(args)]
    record = ["val/accuracy"]
    teacher = timed_run([*data, "teacher=none", f"backbone.alpha={args.teacher_alpha}",
                         f"trainer.max_epochs={args.teacher_epochs}"], out / "emb_teacher", record)
    student = [*data, "backbone.alpha=0.25", f"trainer.max_epochs={args.student_epochs}"]
    online = timed_run([*student, "teacher=path", f"teacher.path={teacher['best_checkpoint']}"], out / "emb_student", record)
    baseline = timed_run([*student, "teacher=none"], out / "emb_baseline", record)
    models = []
    for key, name, result in (("teacher", f"teacher {args.teacher_alpha:g} (identity labels)", teacher),
                              ("student", "student 0.25 distilled", online),
                              ("baseline", "student 0.25 on identity labels (baseline)", baseline)):
        m = evaluate(data, result["best_checkpoint"], out / f"eval_emb_{key}")
        models.append({"key": key, "model": name, "accuracy": m["val/accuracy"], "accuracy_std": m["val/accuracy_std"],
                       "tar_far_1e-3": m["val/tar@far0.001"], "tar_far_1e-4": m["val/tar@far0.0001"], "auc": m["val/auc"],
                       "train_cpu_s": result["cpu_s"], "epochs": result["epochs"]})
    return {"models": models, "impostor_pairs": 10 * args.pairs_per_fold, "speed": speed_rows("embeddings", args)}


def common(args) -> list[str]:
    """Overrides every run of both parts shares: precision and seed."""
    return [f"trainer.precision={args.precision}", f"seed={args.seed}"]


def speed_rows(task: str, args) -> list[dict]:
    """Student 0.25, the trained teacher's width and the full-width 1.0 MobileNet (the first row is the student)."""
    if args.no_speed:
        return []
    return [{"alpha": alpha, **speed(task, alpha, args.resolution)} for alpha in [0.25, *sorted({args.teacher_alpha, 1.0})]]


def speed_table(rows: list[dict], resolution: int) -> str:
    student, teachers = rows[0], rows[1:]
    head = " | ".join(f"teacher {t['alpha']:g} | student / teacher {t['alpha']:g}" for t in teachers)
    lines = [f"| {resolution}px, CPU | student 0.25 | {head} |", "|---" * (2 + 2 * len(teachers)) + "|"]
    for key, label in (("mult_adds_M", "mult-adds (M)"), ("params_M", "params (M)"), ("ms_b1", "latency batch 1 (ms, fastest block)"),
                       ("ms_b32", "latency batch 32 (ms, fastest block)")):
        cells = " | ".join(f"{t[key]:.2f} | {student[key] / t[key]:.3f}" for t in teachers)
        lines.append(f"| {label} | {student[key]:.2f} | {cells} |")
    return "\n".join(lines)


def tables(results: dict) -> dict[str, str]:
    """`attributes`, `embeddings`: quality of teacher, students and baseline; `*_speed`: student against teachers."""
    out, resolution = {}, results["settings"]["resolution"]
    if "attributes" in results:
        rows = ["| model | mean AP (%) | mean accuracy (%) | train CPU minutes |", "|---|---|---|---|"]
        rows += [f"| {m['model']} | {100 * m['mAP']:.1f} | {100 * m['mean_accuracy']:.1f} | {m['train_cpu_s'] / 60:.1f} |"
                 for m in results["attributes"]["models"]]
        out["attributes"] = "\n".join(rows)
        if results["attributes"]["speed"]:
            out["attributes_speed"] = speed_table(results["attributes"]["speed"], resolution)
    if "embeddings" in results:
        rows = ["| model | 10-fold accuracy (%) | TAR@FAR1e-3 (%) | TAR@FAR1e-4 (%) | AUC | train CPU minutes |",
                "|---|---|---|---|---|---|"]
        rows += [f"| {m['model']} | {100 * m['accuracy']:.1f} ± {100 * m['accuracy_std']:.1f} | {100 * m['tar_far_1e-3']:.1f} | "
                 f"{100 * m['tar_far_1e-4']:.1f} | {m['auc']:.3f} | {m['train_cpu_s'] / 60:.1f} |"
                 for m in results["embeddings"]["models"]]
        out["embeddings"] = "\n".join(rows)
        if results["embeddings"]["speed"]:
            out["embeddings_speed"] = speed_table(results["embeddings"]["speed"], resolution)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("attributes", "embeddings", "both"), default="both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--teacher-alpha", type=float, default=0.5, help="the teacher's width (the student's is 0.25)")
    parser.add_argument("--teacher-epochs", type=int, default=30)
    parser.add_argument("--student-epochs", type=int, default=30)
    parser.add_argument("--attr-train", type=int, default=800)
    parser.add_argument("--attr-val", type=int, default=300)
    parser.add_argument("--ids", type=int, default=100)
    parser.add_argument("--test-ids", type=int, default=80)
    parser.add_argument("--images-per-id", type=int, default=6)
    parser.add_argument("--pairs-per-fold", type=int, default=100)
    parser.add_argument("--precision", default="auto", help="trainer.precision of every run: auto, 32-true, bf16-mixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-speed", action="store_true", help="skip the latency / mult-adds comparison")
    parser.add_argument("--results", default="face_distillation/default",
                        help="results file benchmarks/results/<NAME>.json (this benchmark's runs: face_distillation/...)")
    parser.add_argument("--out", default=None, help="folder for generated data and runs (default: a temp dir)")
    args = parser.parse_args()

    import torch

    from toolkit.precision import resolve_precision

    torch.set_num_threads(args.threads)
    precision = resolve_precision(args.precision, "cpu")  # what `auto` chooses here (the runs get args.precision)
    out = Path(args.out or tempfile.mkdtemp(prefix="face_distillation_"))
    os.environ.setdefault("TOOLKIT_CACHE_DIR", str(out / "cache"))
    os.environ.setdefault("TOOLKIT_LOG_DIR", str(out / "outputs"))
    results = {"settings": vars(args), "precision": precision, "threads": torch.get_num_threads()}
    if args.part in ("attributes", "both"):
        results["attributes"] = attributes(args, out)
    if args.part in ("embeddings", "both"):
        results["embeddings"] = embeddings(args, out)
    print(f"\n# face distillation benchmark ({args.threads} CPU threads, {precision}, torch {torch.__version__})")
    for name, table in tables(results).items():
        print(f"\n{name}:\n{table}")
    write_results(args.results, results)


if __name__ == "__main__":
    main()
