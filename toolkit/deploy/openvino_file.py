"""An OpenVINO IR (`.xml` with its `.bin`) under OpenVINO Runtime on the CPU, torch-free, behind the runners'
interface: `run(batch)` -> {output name: array}. Its metadata is in the IR's runtime info (`mobilenet_toolkit`
section, written by `toolkit.formats.openvino`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.deploy.metadata import check_input, check_outputs, checked, decode
from toolkit.deploy.onnx_file import MissingRuntimeError
from toolkit.errors import DataError

#: the IR's runtime-info section holding the toolkit's metadata
RT_INFO_KEY = "mobilenet_toolkit"
REEXPORT = ("copy the .xml and its .bin again (together, in one folder), or export it again with "
            "`python -m toolkit mode=export ckpt_path=... export.formats=[openvino]`")


class OpenVinoModel:
    """An IR compiled for OpenVINO's CPU plugin (`threads`: INFERENCE_NUM_THREADS)."""

    format_family = "openvino"
    libraries = ("openvino",)

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import openvino as ov
        except ImportError as e:
            raise MissingRuntimeError("running OpenVINO .xml files needs openvino: "
                                      "pip install 'mobilenet-toolkit[openvino]'") from e
        self.path = Path(path)
        if not self.path.with_suffix(".bin").is_file():
            raise DataError(f"{self.path}: its weights {self.path.with_suffix('.bin').name} are not beside it; {REEXPORT}")
        core = ov.Core()
        try:
            self.model = core.read_model(str(self.path))
            # LATENCY: one stream using every thread on each request, for one image (or one batch) at a time as
            # apps and toolkit.deploy run it (THROUGHPUT splits the threads into streams for parallel requests).
            # f32: the CPU plugin would otherwise run an fp32 IR's float ops in bf16 on AMX CPUs (outputs off by
            # 1e-1); in an int8 IR it applies to the layers left float (first input, heads, softmax), kept f32 too
            config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                      **({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})}
            self.compiled = core.compile_model(self.model, "CPU", config)
        except RuntimeError as e:  # OpenVINO's refusal of a damaged or foreign file
            detail = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise DataError(f"{self.path}: OpenVINO cannot load it ({detail[:200]}); {REEXPORT}") from e
        self.request = self.compiled.create_infer_request()
        self.output_names = [output.get_any_name() for output in self.compiled.outputs]

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> tuple[OpenVinoModel, dict[str, Any]]:
        """The compiled IR and the metadata in its runtime info, checked against the IR's input and outputs."""
        model = cls(path, threads)
        metadata = checked(path, model.metadata())
        check_outputs(metadata, model.output_shapes(), f"{path} (rt_info)")
        check_input(metadata, model.input_shape(), f"{path} (rt_info)")
        return model, metadata

    def metadata_props(self) -> dict[str, str]:
        """The toolkit's metadata entries (JSON-encoded values), {} when the IR has none."""
        info = self.model.get_rt_info()
        if RT_INFO_KEY not in info:
            return {}
        return {key: value.astype(str) for key, value in self.model.get_rt_info([RT_INFO_KEY]).astype(dict).items()}

    def metadata(self) -> dict[str, Any]:
        return decode(self.metadata_props(), f"{self.path} (rt_info {RT_INFO_KEY})")

    def input_shape(self) -> list:
        return [d.get_length() if d.is_static else None for d in self.compiled.inputs[0].get_partial_shape()]

    def output_shapes(self) -> dict[str, list]:
        return {o.get_any_name(): [d.get_length() if d.is_static else None for d in o.get_partial_shape()]
                for o in self.compiled.outputs}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        try:
            results = self.request.infer({0: np.ascontiguousarray(batch, dtype=np.float32)})
        except RuntimeError as e:
            detail = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise DataError(f"{self.path}: OpenVINO cannot run the model on a {list(batch.shape)} input "
                            f"({detail[:200]}): the file's metadata (resize, input_size) does not match its graph; "
                            "export it again") from e
        return {name: np.array(results[output]) for name, output in zip(self.output_names, self.compiled.outputs,
                                                                            strict=True)}
