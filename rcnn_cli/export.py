"""``rcnn-export ckpt=PATH format=onnx|torchscript [output=DIR]``: a deployable model file."""

import hydra
from omegaconf import DictConfig

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.cli import report_errors


@hydra.main(version_base="1.3", config_path="pkg://rcnn_cli.conf", config_name="export")
def main(cfg: DictConfig) -> None:
    from rcnn_cli.deploy.export import export_deployable

    with report_errors():
        export_deployable(cfg)


if __name__ == "__main__":
    main()
