"""``rcnn-eval ckpt=PATH [dataset=...]``: evaluate a checkpoint in its own run directory."""

import hydra
from omegaconf import DictConfig

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.cli import report_errors


@hydra.main(version_base="1.3", config_path="pkg://rcnn_cli.conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    from rcnn_cli.engine.evaluator import evaluate_checkpoint
    from rcnn_cli.evaluation.build import headline

    with report_errors():
        metrics = evaluate_checkpoint(cfg)
    return headline(metrics)


if __name__ == "__main__":
    main()
