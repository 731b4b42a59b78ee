"""Resume checks: the model and data a checkpoint was trained with must not change."""

from __future__ import annotations

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


def config_differences(saved: dict, current: dict) -> list[str]:
    a, b = flatten(saved), flatten(current)
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}" for k in keys
            if a.get(k, "<absent>") != b.get(k, "<absent>")
            and not any(k == m or (m.endswith(".") and k.startswith(m)) for m in MAY_CHANGE)]


def check_resume_config(saved: dict, current: dict, path) -> None:
    diff = config_differences(saved, current)
    if diff:
        raise ConfigError(f"resume={path}: the model/data config differs from the checkpoint's:\n  "
                          + "\n  ".join(diff))
