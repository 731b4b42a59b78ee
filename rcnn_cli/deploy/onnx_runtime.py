"""An exported ONNX file as a detector: ``rcnn-predict`` / ``rcnn-eval ckpt=<model.onnx>``.

``OnnxDetector`` has the call convention of the torch detectors (a list of ``(3, H, W)``
images in [0, 1] -> one dict of ``boxes``/``labels``/``scores`` [/``masks``] per image), so the
prediction and evaluation loops run it unchanged; each image is one ONNX Runtime run (the
graph's batch is one image). A ``model=fast`` file takes the image's external proposals as its
second input, as the torch model takes ``proposals=``. CPU provider by default, CUDA when the device is ``cuda`` and
onnxruntime has it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from rcnn_cli.deploy.sidecar import read_sidecar
from rcnn_cli.errors import CheckpointError, ConfigError


def is_onnx(path: str | Path) -> bool:
    return Path(path).suffix == ".onnx"


def providers(device: torch.device) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxDetector(nn.Module):
    def __init__(self, path: str | Path, device: torch.device, threads: int = 0):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError(f"ckpt={path}: running an ONNX file needs onnxruntime: pip "
                              "install 'rcnn-cli[export]'") from None
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers(device))
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise CheckpointError(f"{path}: onnxruntime cannot load it: {e}") from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def forward(self, images: list[Tensor],
                proposals: list[Tensor] | None = None) -> list[dict[str, Tensor]]:
        if (proposals is not None) != (len(self.input_names) == 2):
            raise ConfigError(f"ONNX inputs {self.input_names}: proposals are "
                              f"{'missing' if proposals is None else 'not an input'}")
        results = []
        for k, image in enumerate(images):
            inputs = [image] + ([proposals[k]] if proposals is not None else [])
            arrays = self.session.run(None, {
                name: x.detach().float().cpu().contiguous().numpy()
                for name, x in zip(self.input_names, inputs)})
            results.append({k: torch.from_numpy(v).to(image.device)
                            for k, v in zip(self.output_names, arrays)})
        return results


def load_onnx(path: str | Path) -> dict:
    """A checkpoint-like dict (classes, category_ids, config, iteration) plus ``onnx``: the
    file's path, from the file's ``model.json``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ckpt={path}: no such ONNX file")
    meta = read_sidecar(path)
    if meta.get("model_format") != "onnx":
        raise CheckpointError(f"{path}: its model.json says {meta.get('model_format')!r}, "
                              "not an ONNX file")
    return {"onnx": str(path), "classes": meta["classes"], "category_ids": meta["category_ids"],
            "config": meta["config"], "iteration": meta["source"]["iteration"]}
