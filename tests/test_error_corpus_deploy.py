"""Issue-20 corpus, the torch-free runner and input files: every case runs through the real CLI
(`python -m toolkit.deploy ...` or `python -m toolkit ...`) and ends with one `error:` line naming the file and the
fix, exit code 2 and no traceback (`assert_one_line_error`), or, where files are left out, with a line counting
and naming them. The models are tiny hand-built ONNX graphs with toolkit metadata (no training, no export)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import assert_one_line_error, run_cli
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from toolkit.data.eval_preprocess import center_crop_rule
from toolkit.deploy.metadata import encode

TINY = ["debug=cpu", "backbone.alpha=0.25", "data.resolution=32", "data.batch_size=8", "trainer.max_epochs=1",
        "data.n_train=12", "data.n_val=6", "data.image_size=40"]
#: a class-folder dataset (data=folder) instead of the generated shapes
FOLDER = ["debug=cpu", "backbone.alpha=0.25", "data.resolution=32", "trainer.max_epochs=1", "data=folder"]


def classifier_metadata(classes: int = 3) -> dict:
    return {"task": "classification", "resolution": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
            "outputs": ["logits"], "resize": center_crop_rule(32, 1.0), "input_size": [32, 32], "channel_order": "RGB",
            "layout": "NCHW", "decode": {"library": "Pillow", "jpeg_draft_min_side": None},
            "class_names": [f"class{i}" for i in range(classes)], "predict_top_k": 2}


def tiny_onnx(path: Path, *, width: int = 3, changes: dict | None = None, drop: tuple = (),
              raw: dict | None = None) -> Path:
    """A 1-layer classifier (mean colour x weights -> `width` logits) with toolkit metadata: `changes` replace keys,
    `drop` removes them, `raw` sets metadata_props strings as they are (not JSON-encoded)."""
    weights = numpy_helper.from_array(np.linspace(-1, 1, 3 * width, dtype=np.float32).reshape(3, width), "W")
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", width])
    nodes = [helper.make_node("GlobalAveragePool", ["image"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]), helper.make_node("MatMul", ["flat", "W"], ["logits"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [image], [logits], [weights]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    metadata = {**classifier_metadata(), **(changes or {})}
    for key in drop:
        metadata.pop(key)
    helper.set_model_props(model, {**encode(metadata), **(raw or {})})
    onnx.save(model, path)
    return path


def photos(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (48, 40), (40 * i, 200 - 40 * i, 90)).save(folder / f"photo{i}.jpg")
    return folder


def deploy(args: list, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m toolkit.deploy ARGS` as a user types it."""
    return subprocess.run([sys.executable, "-m", "toolkit.deploy", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def strict_json(path: Path):
    """The file parsed as strict JSON: NaN, Infinity and -Infinity are refused."""

    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---- the model file --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, fragments", [
    (b"", ["empty.onnx", "not a readable ONNX model", "export it again"]),
    (b"\x08\x07garbage that is not a protobuf" * 20, ["empty.onnx", "not a readable ONNX model"]),
], ids=["empty", "corrupt"])
def test_empty_or_corrupt_onnx(tmp_path, content, fragments):
    (tmp_path / "empty.onnx").write_bytes(content)
    assert_one_line_error(deploy(["empty.onnx", photos(tmp_path / "in")], tmp_path), *fragments)


def test_external_data_outside_the_model_folder_is_named_with_the_rule(tmp_path):
    model = onnx.load(tiny_onnx(tmp_path / "whole.onnx"))
    np.ones((3, 3), np.float32).tofile(tmp_path / "weights.bin")
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../weights.bin"), ("offset", "0"), ("length", "36")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    (tmp_path / "models").mkdir()
    onnx.save(model, tmp_path / "models" / "model.onnx")
    line = assert_one_line_error(deploy(["models/model.onnx", photos(tmp_path / "in")], tmp_path),
                                 "models/model.onnx", "external data", "inside the model's own folder")
    assert "../weights.bin" in line


def test_a_file_that_is_not_an_executorch_program(tmp_path):
    (tmp_path / "model.pte").write_bytes(b"\x00" * 64)
    (tmp_path / "model.pte.json").write_text(json.dumps(classifier_metadata()))
    assert_one_line_error(deploy(["model.pte", photos(tmp_path / "in")], tmp_path), "model.pte",
                          "not an ExecuTorch program")


# ---- its metadata ----------------------------------------------------------------------------------------------
METADATA_CASES = {
    "bad_json": ({"raw": {"class_names": '["a", '}}, ["metadata key 'class_names' is not valid JSON"]),
    "nan_json": ({"raw": {"mean": "[NaN, 0.5, 0.5]"}}, ["metadata key 'mean' is not valid JSON", "NaN"]),
    "fewer_class_names": ({"changes": {"class_names": ["a", "b"]}}, ["'logits' has 3 values", "lists 2"]),
    "unknown_task": ({"changes": {"task": "segmentation"}}, ["task=\"segmentation\"", "classification"]),
    "missing_key": ({"drop": ("resize",)}, ["no 'resize' key"]),
    "wrong_type": ({"changes": {"resolution": "32"}}, ["resolution=\"32\"", "whole number"]),
    "std_zero": ({"changes": {"std": [0, 0, 0]}}, ["std=[0, 0, 0]", "above 0"]),
    "mean_short": ({"changes": {"mean": [0.5, 0.5]}}, ["mean=", "3 finite numbers"]),
    "resolution_huge": ({"changes": {"resolution": 100000}}, ["resolution=100000", "8192"]),
    "crop_fraction": ({"changes": {"resize": {"mode": "center_crop", "crop_fraction": 2.0}}}, ["resize.crop_fraction"]),
    "resize_mode": ({"changes": {"resize": {"mode": "stretch"}}}, ["resize.mode=\"stretch\""]),
    "no_outputs_named": ({"changes": {"outputs": ["embedding"]}}, ["outputs=", "logits"]),
    "input_size_mismatch": ({"changes": {"resize": center_crop_rule(48, 1.0), "resolution": 48}},
                            ["takes 32x32 images", "48x48"]),
    "top_k": ({"changes": {"predict_top_k": 0}}, ["predict_top_k=0"]),
}


@pytest.mark.parametrize("case", list(METADATA_CASES))
def test_malformed_metadata_is_refused_when_the_file_is_opened(tmp_path, case):
    build, fragments = METADATA_CASES[case]
    tiny_onnx(tmp_path / "model.onnx", **build)
    proc = deploy(["model.onnx", photos(tmp_path / "in"), "--out", "out"], tmp_path)
    assert_one_line_error(proc, "model.onnx", *fragments)
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_malformed_sidecar_json(tmp_path):
    (tmp_path / "model.pte").write_bytes(b"\x00\x00\x00\x00ET12" + b"\x00" * 56)
    (tmp_path / "model.pte.json").write_text('{"task": "classification",')
    assert_one_line_error(deploy(["model.pte", photos(tmp_path / "in")], tmp_path), "model.pte.json", "not valid JSON")
    (tmp_path / "model.pte.json").write_text(json.dumps({**classifier_metadata(), "std": [0.2, 0.0, 0.2]}))
    assert_one_line_error(deploy(["model.pte", photos(tmp_path / "in")], tmp_path), "model.pte.json", "std=")


def test_predictions_are_strict_json(tmp_path):
    tiny_onnx(tmp_path / "model.onnx")
    proc = deploy(["model.onnx", photos(tmp_path / "in", 3), "--out", "out"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = strict_json(tmp_path / "out" / "predictions.json")
    assert len(records) == 3 and all(np.isfinite(t["score"]) for r in records for t in r["top_k"])


def test_a_second_run_without_out_keeps_the_first_runs_predictions(tmp_path):
    tiny_onnx(tmp_path / "model.onnx")
    images = photos(tmp_path / "in", 2)
    for folder in ("predictions", "predictions-2"):
        proc = deploy(["model.onnx", images], tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert f"{folder}/predictions.json" in proc.stdout
    first = (tmp_path / "predictions" / "predictions.json").read_text()
    assert first == (tmp_path / "predictions-2" / "predictions.json").read_text()


# ---- the images ------------------------------------------------------------------------------------------------
def test_a_corrupt_image_names_deploys_own_option_and_skip_corrupt_counts_it(tmp_path):
    tiny_onnx(tmp_path / "model.onnx")
    folder = photos(tmp_path / "in", 2)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    line = assert_one_line_error(deploy(["model.onnx", folder], tmp_path), "broken.png", "--skip-corrupt")
    assert "data.skip_corrupt" not in line  # an option toolkit.deploy does not take
    proc = deploy(["model.onnx", folder, "--skip-corrupt", "--out", "out"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 unreadable image(s) of 3: " in proc.stderr and "broken.png" in proc.stderr
    assert [Path(r["path"]).name for r in strict_json(tmp_path / "out" / "predictions.json")] == ["photo0.jpg", "photo1.jpg"]


def test_files_left_out_of_a_folder_are_counted_and_gifs_are_predicted(tmp_path):
    tiny_onnx(tmp_path / "model.onnx")
    folder = photos(tmp_path / "in", 1)
    frames = [Image.new("RGB", (40, 40), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(folder / "anim.GIF", save_all=True, append_images=frames[1:])  # the first frame is predicted
    (folder / "notes.txt").write_text("not an image")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(folder / "pipe.jpg")  # opening it would wait forever for a writer
    proc = deploy(["model.onnx", folder, "--out", "out"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = [line for line in proc.stderr.splitlines() if line.startswith("warning: predicting")]
    assert len(summary) == 1, proc.stderr
    for fragment in ("predicting 2 images", "1 file that is not an image (.txt", "3 unreadable files",
                     "loop.jpg (symbolic link loop)", "gone.jpg (broken link)", "pipe.jpg (not a regular file)"):
        assert fragment in summary[0], summary[0]
    names = [Path(r["path"]).name for r in strict_json(tmp_path / "out" / "predictions.json")]
    assert names == ["anim.GIF", "photo0.jpg"]


def test_a_folder_without_images_and_a_looping_link_named_as_input(tmp_path):
    tiny_onnx(tmp_path / "model.onnx")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    assert_one_line_error(deploy(["model.onnx", "docs"], tmp_path), "docs", "no readable images", ".txt")
    (tmp_path / "me.jpg").symlink_to(tmp_path / "me.jpg")
    assert_one_line_error(deploy(["model.onnx", "me.jpg"], tmp_path), "me.jpg", "symbolic link loop")
    assert_one_line_error(deploy(["model.onnx", "nothing.jpg"], tmp_path), "nothing.jpg", "no such image file")


def test_predict_mode_counts_files_left_out_and_names_data_skip_corrupt(tmp_path):
    tiny_onnx(tmp_path / "model.onnx")
    folder = photos(tmp_path / "in", 1)
    (folder / "clip.gif").write_bytes(b"GIF89a not really")
    (folder / "notes.txt").write_text("x")
    proc = run_cli(["debug=cpu", "mode=predict", f"ckpt_path={tmp_path / 'model.onnx'}", f"predict.input={folder}"],
                   tmp_path)
    line = assert_one_line_error(proc, "clip.gif", "data.skip_corrupt=true")
    assert "--skip-corrupt" not in line
    assert "predicting 2 images; left out 1 file that is not an image (.txt" in proc.stdout + proc.stderr
    proc = run_cli(["debug=cpu", "mode=predict", f"ckpt_path={tmp_path / 'model.onnx'}", f"predict.input={folder}",
                    "data.skip_corrupt=true", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 1 unreadable image(s) of 2" in proc.stdout + proc.stderr
    assert len(strict_json(tmp_path / "run" / "predictions.json")) == 1


def test_predict_mode_refuses_malformed_metadata(tmp_path):
    tiny_onnx(tmp_path / "model.onnx", changes={"std": [0.0, 0.0, 0.0]})
    proc = run_cli(["debug=cpu", "mode=predict", f"ckpt_path={tmp_path / 'model.onnx'}",
                    f"predict.input={photos(tmp_path / 'in')}"], tmp_path)
    assert_one_line_error(proc, "model.onnx", "std=[0.0, 0.0, 0.0]", "above 0")


# ---- class folders for training ------------------------------------------------------------------------------
def class_folders(root: Path) -> Path:
    for name in ("cat", "dog"):
        photos(root / name, 2)
    return root


def test_a_class_folder_holding_only_a_looping_link_is_named(tmp_path):
    root = class_folders(tmp_path / "data")
    (root / "owl").mkdir()
    (root / "owl" / "loop.jpg").symlink_to(root / "owl" / "loop.jpg")
    proc = run_cli([*FOLDER, f"data.root={root}", "data.val_fraction=0.5"], tmp_path)
    assert_one_line_error(proc, "owl", "has no images", "loop.jpg (symbolic link loop)")


def test_a_class_folder_that_is_a_looping_link_is_named(tmp_path):
    root = class_folders(tmp_path / "data")
    (root / "owl").symlink_to(root / "owl")
    proc = run_cli([*FOLDER, f"data.root={root}", "data.val_fraction=0.5"], tmp_path)
    assert_one_line_error(proc, "owl", "symbolic link loop", "remove it")


@pytest.mark.slow
def test_unreadable_entries_beside_images_are_left_out_and_named(tmp_path):
    """A looping link, a broken link and a FIFO named .jpg in a class folder (training used to stop with an
    ELOOP traceback): named in the scan's warning, like every file that is not an image, and training runs."""
    root = class_folders(tmp_path / "data")
    (root / "cat" / "loop.jpg").symlink_to(root / "cat" / "loop.jpg")
    os.mkfifo(root / "dog" / "pipe.jpg")
    proc = run_cli([*FOLDER, f"data.root={root}", "data.val_fraction=0.5", "data.num_workers=0",
                    "data.batch_size=2", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "cat/loop.jpg (symbolic link loop)" in log and "dog/pipe.jpg (not a regular file)" in log


# ---- a pickle that would run code --------------------------------------------------------------------------------
class Payload:
    """Unpickling this calls os.system: torch's weights-only unpickler blocks the `posix` module outright."""

    def __reduce__(self):
        return os.system, ("echo payload ran",)


@pytest.fixture
def evil(tmp_path) -> Path:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"payload": Payload()}}, path, _use_new_zipfile_serialization=True)
    return path


@pytest.mark.parametrize("args", [["mode=eval", "ckpt_path={evil}"], ["init_from={evil}"],
                                  ["backbone.pretrained={evil}"]], ids=["eval", "init_from", "pretrained"])
def test_a_code_running_pickle_is_refused_without_torchs_advice(tmp_path, evil, args):
    proc = run_cli([*TINY, *(a.format(evil=evil) for a in args)], tmp_path)
    line = assert_one_line_error(proc, str(evil), "posix.system", "refused", "trust_file=true", "docs/security.md")
    assert "weights_only" not in proc.stdout + proc.stderr  # torch's "re-run with weights_only=False"
    assert "add_safe_globals" not in proc.stdout + proc.stderr and "payload ran" not in proc.stdout
    assert "run code" in line


def test_every_form_of_torchs_refusal_names_the_object_and_never_its_advice(tmp_path):
    """torch words its refusals three ways (a blocked module, an object off its allowlist, not a pickle at all);
    each is one message naming the file, and none repeats torch's `weights_only=False` or allowlist advice."""
    from toolkit.errors import DataError
    from toolkit.io import UnsafeFileError, load_torch_file

    class Opener:
        def __reduce__(self):
            return open, (str(tmp_path / "payload_ran"), "w")

    files = {"blocked.pt": Payload(), "allowlist.pt": Opener(), "module.pt": torch.nn.Linear(1, 1)}
    for name, obj in files.items():
        torch.save({"x": obj}, tmp_path / name, _use_new_zipfile_serialization=name != "module.pt")
    (tmp_path / "junk.pt").write_bytes(b"junkjunk")
    (tmp_path / "plain.pt").write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00]\x94K\x01a.")  # pickle of [1]
    expected = {"blocked.pt": "posix.system", "allowlist.pt": "io.open", "module.pt": "torch.nn.modules.linear.Linear"}
    for name, needs in expected.items():
        with pytest.raises(UnsafeFileError) as error:
            load_torch_file(tmp_path / name)
        assert f"the Python object {needs}" in str(error.value) and "trust_file=true" in str(error.value)
        assert "weights_only" not in str(error.value) and "safe_globals" not in str(error.value)
    for name in ("junk.pt", "plain.pt"):
        with pytest.raises(DataError, match="not a readable torch file") as error:
            load_torch_file(tmp_path / name)
        assert not isinstance(error.value, UnsafeFileError) and "weights_only" not in str(error.value)
    assert not (tmp_path / "payload_ran").exists()


def test_an_output_folder_that_cannot_be_made(tmp_path):
    tiny_onnx(tmp_path / "model.onnx")
    (tmp_path / "taken").write_text("a file where the output folder should go")
    assert_one_line_error(deploy(["model.onnx", photos(tmp_path / "in"), "--out", "taken"], tmp_path), "taken")


def test_training_loaders_and_deploy_read_a_gif_alike(tmp_path):
    """A GIF is an image everywhere: class folders take it as a sample, and training's reader and deploy's
    decode it to the same first-frame pixels."""
    from toolkit.data.decode import read_rgb
    from toolkit.data.folder import scan_class_folders
    from toolkit.data.images import load_rgb

    root = class_folders(tmp_path / "data")
    frames = [Image.new("RGB", (40, 30), c) for c in ((250, 10, 10), (10, 10, 250))]
    frames[0].save(root / "cat" / "anim.gif", save_all=True, append_images=frames[1:])
    _, samples = scan_class_folders(root)
    assert (root / "cat" / "anim.gif", 0) in samples
    assert np.array_equal(read_rgb(root / "cat" / "anim.gif"), load_rgb(root / "cat" / "anim.gif"))
    assert tuple(load_rgb(root / "cat" / "anim.gif")[0, 0]) == (250, 10, 10)


def test_a_class_folder_without_read_permission_is_named(tmp_path, monkeypatch):
    """chmod 000 cannot be tested as root (the tests' user here), who reads anything: the refusal is simulated."""
    import toolkit.data.folder as folder_module
    from toolkit.errors import DataError

    root = class_folders(tmp_path / "data")
    real_scandir = os.scandir

    def scandir(path):
        if Path(path).name == "dog":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(folder_module.os, "scandir", scandir)
    with pytest.raises(DataError, match=r"dog: class folder cannot be read \(Permission denied\)"):
        folder_module.scan_class_folders(root)
