"""``rcnn-predict ckpt=PATH input=<image | folder | glob | dataset> [output=DIR]``."""

import hydra
from omegaconf import DictConfig

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.cli import report_errors


@hydra.main(version_base="1.3", config_path="pkg://rcnn_cli.conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    from rcnn_cli.engine.predictor import predict_images

    with report_errors():
        predict_images(cfg)


if __name__ == "__main__":
    main()
