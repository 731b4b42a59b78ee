"""Resume checks: the model and data a checkpoint was trained with must not change.

A key that the checkpoint's config lacks was added to the schemas after it was written; new
keys default to what the code did before them, so such a key differs only where the current
value is not its schema default (e.g. ``dataset.vflip_prob=0.5`` against a checkpoint from
before vertical flips existed).
"""

from __future__ import annotations

import dataclasses
from enum import Enum

from omegaconf import DictConfig, OmegaConf

from rcnn_cli.errors import ConfigError

# Keys that may differ between the checkpoint's run and the resumed run.
MAY_CHANGE = ("schedule.max_iter", "schedule.eval_period", "schedule.checkpoint_period",
              "schedule.keep_checkpoints", "dataset.num_workers", "log.", "eval.", "faults.",
              "device", "threads", "resume", "ckpt_trust")


def flatten(d, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def schema_defaults(cfg: DictConfig, keys) -> dict:
    """The typed schema's default of each dotted key in ``keys``, where its node has one (as
    the stored configs hold them: enums by name)."""
    out = {}
    for key in keys:
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        if not dataclasses.is_dataclass(schema):
            continue
        field = {f.name: f for f in dataclasses.fields(schema)}.get(leaf)
        if field is None:
            continue
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            continue
        out[key] = value.name if isinstance(value, Enum) else value
    return out


def config_differences(saved: dict, current: dict, defaults: dict | None = None,
                       may_change: tuple[str, ...] = MAY_CHANGE) -> list[str]:
    """``key: saved -> current`` for every key not in ``may_change`` (a key, or a prefix
    ending in "."); a key absent from ``saved`` stands for its entry in ``defaults`` (the
    schema default), if it has one."""
    a, b = flatten(saved), flatten(current)
    for key, value in (defaults or {}).items():
        a.setdefault(key, value)
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys
            if a.get(k, "<absent>") != b.get(k, "<absent>")
            and not any(k == m or (m.endswith(".") and k.startswith(m)) for m in may_change)]


def saved_config_differences(saved: dict, cfg: DictConfig,
                             may_change: tuple[str, ...] = MAY_CHANGE) -> list[str]:
    """``config_differences`` between a stored plain config (``saved``) and ``cfg``, the keys
    ``saved`` lacks counting as their schema defaults."""
    from rcnn_cli.engine.runtime import config_dict

    current = config_dict(cfg)
    newer = set(flatten(current)) - set(flatten(saved))
    return config_differences(saved, current, schema_defaults(cfg, newer), may_change)


def check_resume_config(saved: dict, cfg: DictConfig, path) -> None:
    """Refuses to resume ``cfg`` from a checkpoint trained with another model or data config
    (``saved``)."""
    diff = saved_config_differences(saved, cfg)
    if diff:
        raise ConfigError(f"resume={path}: the model/data config differs from the checkpoint's:\n  "
                          + "\n  ".join(diff))
