"""``rcnn-export``'s work: load a trained detector, write ONNX or TorchScript + ``model.json``,
and check the written file against the eager model on two image sizes."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from rcnn_cli.config import validate
from rcnn_cli.deploy.graph import DeployGraph, build_deploy_graph
from rcnn_cli.deploy.parity import differences, within_tolerance
from rcnn_cli.deploy.sidecar import DEPLOY_FORMAT, SIDECAR, describe
from rcnn_cli.engine import runtime
from rcnn_cli.engine.export import SIDECAR as WEIGHTS_SIDECAR
from rcnn_cli.engine.export import WEIGHTS, is_export
from rcnn_cli.engine.runtime import hydra_run_dir
from rcnn_cli.errors import CheckpointError, ConfigError, ExportError
from rcnn_cli.io import atomic_write_json, sha256

log = logging.getLogger("rcnn_cli")

FILES = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}


def resolve_source(spec: str) -> Path:
    """A checkpoint or export file; a run directory gives its ``export/`` (else its
    ``checkpoints/last.pt``)."""
    path = Path(spec)
    if not path.is_dir():
        return path
    for candidate in (path / WEIGHTS_SIDECAR, path / "export" / WEIGHTS_SIDECAR,
                      path / "checkpoints" / "last.pt"):
        if candidate.is_file():
            return candidate.parent if candidate.name == WEIGHTS_SIDECAR else candidate
    raise CheckpointError(f"ckpt={spec}: a directory without model.json, export/model.json or "
                          "checkpoints/last.pt (give a checkpoint, run or export directory)")


def weights_file(source: Path) -> Path:
    """The file whose bytes hold the weights (its sha256 goes into model.json)."""
    return source / WEIGHTS if source.is_dir() else source


def example_image(shorter: int, seed: int = 0) -> torch.Tensor:
    """A seeded 3:4 (H:W) random image: tracing needs one, its content does not matter."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(3, shorter, shorter * 4 // 3, generator=gen)


def check_output_dir(out_dir: Path, file: str) -> None:
    """Never overwrite another export's sidecar (a weights export, or the other format's)."""
    sidecar = out_dir / SIDECAR
    if not sidecar.is_file():
        return
    import json

    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        meta = {}
    if not isinstance(meta, dict) or meta.get("format") != DEPLOY_FORMAT or \
            meta.get("file") != file:
        raise ConfigError(f"output={out_dir} already holds {sidecar} of another export; "
                          "choose another output=DIR")


def run_exported(fmt: str, path: Path, inputs: tuple[torch.Tensor, ...],
                 graph: DeployGraph) -> dict:
    names = graph.output_names
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {k: v.numpy() for k, v in zip(graph.input_names, inputs)}
        return dict(zip(names, session.run(None, feed)))
    import torchvision  # noqa: F401  (registers the torchvision ops the file calls)

    module = torch.jit.load(str(path))
    with torch.no_grad():
        return {k: v.numpy() for k, v in zip(names, module(*inputs))}


def check_parity(graph: DeployGraph, fmt: str, path: Path, shorter: int) -> list[dict]:
    """The exported file vs the eager graph on the example size and a smaller portrait one."""
    report = []
    portrait = example_image(shorter, seed=1)[:, :, :shorter * 3 // 4]
    for seed, image in enumerate((example_image(shorter), portrait)):
        inputs = graph.example_inputs(image, seed=seed + 1)
        with torch.no_grad():
            eager = {n: v.numpy() for n, v in zip(graph.output_names, graph(*inputs))}
        diff = differences(eager, run_exported(fmt, path, inputs, graph))
        diff["image_size"] = list(image.shape[1:])
        report.append(diff)
        if not within_tolerance(diff):
            raise ExportError(f"{path}: the exported file differs from the eager model on a "
                              f"{tuple(image.shape[1:])} image: {diff}")
    return report


def export_deployable(cfg: DictConfig, run_dir: str | Path | None = None) -> dict:
    """Write ``<output>/model.onnx`` (or ``model.torchscript.pt``) and ``model.json``."""
    from rcnn_cli.engine.evaluator import load_trained

    validate(cfg)
    fmt = getattr(cfg.format, "value", cfg.format)
    if cfg.image_size < 0:
        raise ConfigError(f"image_size={cfg.image_size}: must be >= 0 (0: the training size)")
    out_dir = Path(cfg.output) if cfg.output else (
        Path(run_dir) if run_dir is not None else hydra_run_dir())
    path = out_dir / FILES[fmt]
    check_output_dir(out_dir, path.name)
    runtime.set_threads(cfg.threads)
    source = resolve_source(cfg.ckpt)
    ckpt, train_cfg = load_trained(str(source), cfg.ckpt_trust)
    graph = build_deploy_graph(ckpt, train_cfg, cfg.ckpt)
    shorter = cfg.image_size or int(train_cfg.dataset.min_size)
    example = example_image(shorter)
    log.info("exporting %s (model=%s backbone=%s) as %s -> %s", source, train_cfg.model.name,
             train_cfg.backbone.name, fmt, path)
    if fmt == "onnx":
        from rcnn_cli.deploy.onnx import export_onnx

        try:
            export_onnx(graph, example, path, cfg.opset)
        except torch.onnx.errors.UnsupportedOperatorError as e:
            raise ExportError(f"model={train_cfg.model.name} backbone={train_cfg.backbone.name}"
                              f": an operator has no ONNX form ({e})") from None
        exporter, opset = "torch.onnx.export (TorchScript-based, dynamo=False)", cfg.opset
    else:
        from rcnn_cli.deploy.torchscript import export_torchscript

        export_torchscript(graph, example, path)
        exporter, opset = "torch.jit.trace", None
    try:
        parity = check_parity(graph, fmt, path, shorter) if cfg.check else []
    except ExportError:
        path.unlink()  # a file that does not reproduce the model is not left behind
        raise
    src_file = weights_file(source) if is_export(source) else source
    meta = describe(fmt=fmt, file=path.name, file_sha256=sha256(path), exporter=exporter,
                    opset=opset, source=str(source), source_sha256=sha256(src_file), ckpt=ckpt,
                    train_cfg=train_cfg, graph=graph, example_size=list(example.shape[1:]),
                    parity=parity)
    atomic_write_json(out_dir / SIDECAR, meta)
    log.info("wrote %s and %s%s", path, out_dir / SIDECAR,
             f"; parity {parity}" if parity else "")
    return {"file": str(path), "sidecar": str(out_dir / SIDECAR), "parity": parity}
