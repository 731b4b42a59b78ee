"""Typed configuration schemas, registered in Hydra's ConfigStore.

Every YAML file of a config group starts from one of these dataclasses
(``defaults: [<group>_schema, _self_]``), so a misspelt key or a wrong type in a
file *or* on the command line fails at start-up naming the full key.

Split by concept: ``enums``, ``model`` (the detector's parts), ``data``, ``run`` (schedule,
logging, evaluation, the top-level configs) and ``validation``.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from rcnn_cli.config.data import CocoConf, ShapesConf, VocConf, capped_workers
from rcnn_cli.config.export import ExportMainConf
from rcnn_cli.config.model import RegionModelConf
from rcnn_cli.config.run import (
    GROUP_SCHEMAS,
    AlternatingScheduleConf,
    DataMainConf,
    EvalMainConf,
    PredictMainConf,
    ScheduleConf,
    TrainConf,
)
from rcnn_cli.config.validation import typed_train_config, validate

__all__ = ["CocoConf", "ScheduleConf", "VocConf", "register_configs", "typed_train_config",
           "validate"]


def register_configs() -> None:
    """Store the schemas; group YAMLs refer to them as ``<group>_schema``."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConf)
    cs.store(name="eval_schema", node=EvalMainConf)
    cs.store(name="predict_schema", node=PredictMainConf)
    cs.store(name="export_schema", node=ExportMainConf)
    for group, node in GROUP_SCHEMAS.items():
        cs.store(group=group, name=f"{group}_schema", node=node)
    cs.store(group="dataset", name="shapes_schema", node=ShapesConf)
    cs.store(group="dataset", name="coco_schema", node=CocoConf)
    cs.store(group="dataset", name="voc_schema", node=VocConf)
    cs.store(name="data_schema", node=DataMainConf)
    cs.store(group="schedule", name="alternating_schema", node=AlternatingScheduleConf)
    cs.store(group="model", name="region_schema", node=RegionModelConf)
    OmegaConf.register_new_resolver("workers", capped_workers, replace=True, use_cache=True)


register_configs()

