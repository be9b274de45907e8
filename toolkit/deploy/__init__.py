"""Run an exported model (ONNX, ExecuTorch .pte) without the toolkit's training stack.

Nothing here imports torch for ONNX files: `python -m toolkit.deploy model.onnx photo.jpg` needs only
onnxruntime, numpy, Pillow and OpenCV (the eval pipelines' resize, `toolkit.data.eval_preprocess`). The file's own
metadata (written by `mode=export`) says how to preprocess an image and what its outputs mean, so predictions
match what `mode=predict` writes for a checkpoint.
"""

from toolkit.deploy.metadata import read_metadata
from toolkit.deploy.predict import predict_files
from toolkit.deploy.runtime import open_model

__all__ = ["open_model", "predict_files", "read_metadata"]
