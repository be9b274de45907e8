"""An .onnx file opened and run by ONNX Runtime, with its refusals as one line naming the file and the fix.

ONNX Runtime raises its own exception classes (InvalidProtobuf, Fail, InvalidArgument..., all straight from
`Exception`): they are told apart here by their module, so nothing else a call raises is mistaken for a bad file.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.errors import DataError, ToolkitError


class MissingRuntimeError(ToolkitError):
    """The runtime a file needs is not installed; the message names the extra to install."""


def is_onnxruntime_error(error: BaseException) -> bool:
    return type(error).__module__.startswith("onnxruntime")


def load_problem(path: Path, error: BaseException) -> DataError:
    """The one-line reason ONNX Runtime could not load `path`."""
    text = str(error)
    detail = text.split(" : ", 3)[-1].strip().splitlines()[0][:300] if text else type(error).__name__
    if "External data" in text or "external data" in text:
        return DataError(
            f"{path}: ONNX Runtime refuses the file's external data ({detail}). Weights stored beside an .onnx file must "
            "be named by a relative path inside the model's own folder (no absolute path, no `..`): keep the .onnx "
            "and its data file together in one folder, as `mode=export` writes them, or export the model again")
    if type(error).__name__ in ("InvalidProtobuf", "InvalidGraph", "InvalidArgument") or "Protobuf" in text:
        return DataError(f"{path}: not a readable ONNX model ({detail}); the file is empty, damaged or not ONNX: "
                         "copy it again, or export it again with `python -m toolkit mode=export ckpt_path=...`")
    return DataError(f"{path}: ONNX Runtime cannot load it ({detail}); export it again with "
                     "`python -m toolkit mode=export ckpt_path=...` (or update onnxruntime, if the file is newer)")


def onnx_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session for `path`; a file it refuses is a DataError naming the file."""
    try:
        import onnxruntime
    except ImportError as e:
        raise MissingRuntimeError("running .onnx files needs onnxruntime: pip install 'mobilenet-toolkit[export]'") from e
    path = Path(path)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # its refusals come back as exceptions, reported below; no duplicate log lines
    if threads:
        options.intra_op_num_threads = options.inter_op_num_threads = int(threads)
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        if not is_onnxruntime_error(e):
            raise
        raise load_problem(path, e) from e
