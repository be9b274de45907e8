"""Distil a wide MobileNet teacher into alpha 0.25 on generated faces; print quality and speed of both.

    python benchmarks/face_distillation.py [--part attributes|embeddings|both] [--threads 2] [--out DIR]

For each part, on the generated data (`data=celeba_synthetic` / `data=faces_synthetic`, real formats):
1. the teacher (MobileNet alpha 1.0, `--teacher-alpha`) trains on the labels (`teacher=none`);
2. the student (alpha 0.25) distils from the teacher's checkpoint online (labels unused);
3. attributes only: the same student distils from a `mode=teacher_cache` file instead (timed);
4. a supervised alpha 0.25 baseline trains on the labels;
then `mode=eval` measures each checkpoint (mean AP over the 40 attributes; verification accuracy,
TAR@FAR and AUC on the generated LFW-format pairs), and latency/mult-adds compare student and teacher.
Every figure comes from the toolkit's own commands (`run(cfg)`), nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from _results import write_results
from _runner import QUIET, run_toolkit  # benchmarks/ is on sys.path when run as a script


def timed_run(overrides: list[str], run_dir: Path) -> tuple[dict, float]:
    """Run one job; returns (result, CPU seconds of this process): wall time means little on a shared machine."""
    result, _ = run_toolkit([*QUIET, *overrides], run_dir)
    return result, result["cpu_s"]


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


def attributes(args, out: Path) -> list[str]:
    data = ["task=face_attributes", "data=celeba_synthetic", f"data.n_train={args.attr_train}", f"data.n_val={args.attr_val}",
            f"data.resolution={args.resolution}", "data.batch_size=32", f"data.num_workers={args.workers}"]
    teacher, t_time = timed_run([*data, "teacher=none", f"backbone.alpha={args.teacher_alpha}", f"trainer.max_epochs={args.teacher_epochs}"],
                                out / "attr_teacher")
    ckpt = teacher["best_checkpoint"]
    student = [*data, "backbone.alpha=0.25", f"trainer.max_epochs={args.student_epochs}"]
    online, on_time = timed_run([*student, "teacher=path", f"teacher.path={ckpt}"], out / "attr_student_online")
    cache, c_time = timed_run(["mode=teacher_cache", *data, "teacher=path", f"teacher.path={ckpt}"], out / "attr_cache")
    cached, ca_time = timed_run([*student, "teacher=path", f"teacher.path={cache['cache_file']}"], out / "attr_student_cached")
    baseline, b_time = timed_run([*student, "teacher=none"], out / "attr_baseline")
    rows = []
    for name, result, seconds in ((f"teacher {args.teacher_alpha:g} (labels)", teacher, t_time),
                                  ("student 0.25 distilled online", online, on_time),
                                  ("student 0.25 distilled from cache", cached, ca_time),
                                  ("student 0.25 on labels (baseline)", baseline, b_time)):
        ev, _ = timed_run([*data, "mode=eval", f"ckpt_path={result['best_checkpoint']}"], out / f"eval_{len(rows)}")
        m = ev["metrics"]
        rows.append(f"| {name} | {100 * m['val/mAP']:.1f} | {100 * m['val/mean_accuracy']:.1f} | {seconds / 60:.1f} |")
    return [f"Face attributes: {args.attr_train} train / {args.attr_val} val generated CelebA images at "
            f"{args.resolution}px; teacher {args.teacher_epochs} epochs, students {args.student_epochs} epochs; "
            f"teacher cache written in {c_time:.0f} CPU s.",
            "", "| model | mean AP (%) | mean accuracy (%) | train CPU minutes |", "|---|---|---|---|", *rows, "",
            *speed_table("attributes", args.teacher_alpha, args.resolution)]


def embeddings(args, out: Path) -> list[str]:
    data = ["task=face_embedding", "data=faces_synthetic", f"data.n_identities={args.ids}",
            f"data.n_test_identities={args.test_ids}", f"data.images_per_identity={args.images_per_id}",
            f"data.pairs_per_fold={args.pairs_per_fold}", f"data.resolution={args.resolution}", "data.batch_size=32",
            f"data.num_workers={args.workers}"]
    teacher, t_time = timed_run([*data, "teacher=none", f"backbone.alpha={args.teacher_alpha}", f"trainer.max_epochs={args.teacher_epochs}"],
                                out / "emb_teacher")
    student = [*data, "backbone.alpha=0.25", f"trainer.max_epochs={args.student_epochs}"]
    online, on_time = timed_run([*student, "teacher=path", f"teacher.path={teacher['best_checkpoint']}"], out / "emb_student")
    baseline, b_time = timed_run([*student, "teacher=none"], out / "emb_baseline")
    rows, note = [], ""
    for name, result, seconds in ((f"teacher {args.teacher_alpha:g} (identity labels)", teacher, t_time),
                                  ("student 0.25 distilled", online, on_time),
                                  ("student 0.25 on identity labels (baseline)", baseline, b_time)):
        ev, _ = timed_run([*data, "mode=eval", f"ckpt_path={result['best_checkpoint']}"], out / f"eval_emb_{len(rows)}")
        m = ev["metrics"]
        rows.append(f"| {name} | {100 * m['val/accuracy']:.1f} ± {100 * m['val/accuracy_std']:.1f} | "
                    f"{100 * m['val/tar@far0.001']:.1f} | {100 * m['val/tar@far0.0001']:.1f} | {m['val/auc']:.3f} | "
                    f"{seconds / 60:.1f} |")
    impostors = 10 * args.pairs_per_fold
    if impostors < 10000:
        note = (f"TAR@FAR1e-4 needs >= 10000 impostor pairs; these pairs have {impostors}, so that column is measured "
                "at FAR 0 (the strictest threshold the pairs resolve).")
    return [f"Face embeddings: {args.ids} training identities x {args.images_per_id} images; verification on "
            f"{args.test_ids} held-out identities, 10 folds x {args.pairs_per_fold} same + {args.pairs_per_fold} "
            f"different pairs, at {args.resolution}px; teacher {args.teacher_epochs} epochs, students "
            f"{args.student_epochs} epochs.",
            "", "| model | 10-fold accuracy (%) | TAR@FAR1e-3 (%) | TAR@FAR1e-4 (%) | AUC | train CPU minutes |",
            "|---|---|---|---|---|---|", *rows, "", *([note, ""] if note else []),
            *speed_table("embeddings", args.teacher_alpha, args.resolution)]


def speed_table(task: str, teacher_alpha: float, resolution: int) -> list[str]:
    """Student 0.25 against the trained teacher's width and against the full-width 1.0 MobileNet."""
    student = speed(task, 0.25, resolution)
    teachers = [(alpha, speed(task, alpha, resolution)) for alpha in sorted({teacher_alpha, 1.0})]
    head = " | ".join(f"teacher {a:g} | student / teacher {a:g}" for a, _ in teachers)
    lines = [f"| {resolution}px, CPU | student 0.25 | {head} |", "|---" * (2 + 2 * len(teachers)) + "|"]
    for key, label in (("mult_adds_M", "mult-adds (M)"), ("params_M", "params (M)"), ("ms_b1", "latency batch 1 (ms, fastest block)"),
                       ("ms_b32", "latency batch 32 (ms, fastest block)")):
        cells = " | ".join(f"{t[key]:.2f} | {student[key] / t[key]:.3f}" for _, t in teachers)
        lines.append(f"| {label} | {student[key]:.2f} | {cells} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("attributes", "embeddings", "both"), default="both")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--teacher-alpha", type=float, default=1.0, help="the teacher's width (the student's is 0.25)")
    parser.add_argument("--teacher-epochs", type=int, default=8)
    parser.add_argument("--student-epochs", type=int, default=8)
    parser.add_argument("--attr-train", type=int, default=800)
    parser.add_argument("--attr-val", type=int, default=300)
    parser.add_argument("--ids", type=int, default=100)
    parser.add_argument("--test-ids", type=int, default=80)
    parser.add_argument("--images-per-id", type=int, default=6)
    parser.add_argument("--pairs-per-fold", type=int, default=100)
    parser.add_argument("--out", default=None, help="folder for generated data and runs (default: a temp dir)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="face_distillation_"))
    os.environ.setdefault("TOOLKIT_CACHE_DIR", str(out / "cache"))
    os.environ.setdefault("TOOLKIT_LOG_DIR", str(out / "outputs"))
    report = []
    if args.part in ("attributes", "both"):
        report += attributes(args, out) + [""]
    if args.part in ("embeddings", "both"):
        report += embeddings(args, out)
    print(f"\n# face distillation benchmark ({args.threads} CPU threads, torch {torch.__version__})\n")
    print("\n".join(report))
    write_results("face_distillation", {"settings": vars(args), "threads": args.threads, "report": report},
                  command=" ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
