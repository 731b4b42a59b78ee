"""``rcnn-train``: compose the config, then ``rcnn_cli.engine.train.train(cfg)``.

Also ``torchrun --nproc_per_node=N -m rcnn_cli.train ...`` (see README, "Scaling out").
"""

import hydra
from omegaconf import DictConfig

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.cli import report_errors


@hydra.main(version_base="1.3", config_path="pkg://rcnn_cli.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns ``optimized_metric`` (what sweepers optimise); None for a failed sweep job."""
    from rcnn_cli.engine.sweep import metric_value, record_job
    from rcnn_cli.engine.train import train

    with record_job(cfg) as job, report_errors():
        job["metrics"] = train(cfg)
        return metric_value(job["metrics"], cfg.optimized_metric)
    return None


if __name__ == "__main__":
    main()
