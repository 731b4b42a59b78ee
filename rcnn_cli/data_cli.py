"""``rcnn-data check|browse|convert dataset=...``: the dataset doctor (rcnn_cli.data.doctor)."""

import sys

import hydra
from omegaconf import DictConfig

import rcnn_cli.config  # noqa: F401  (registers the schemas)
from rcnn_cli.cli import report_errors

COMMANDS = ("check", "browse", "convert")


def run(cfg: DictConfig) -> dict:
    """Plain function behind the console script (tests call it directly)."""
    from pathlib import Path

    from rcnn_cli.config import validate
    from rcnn_cli.data import doctor
    from rcnn_cli.errors import ConfigError

    validate(cfg)
    if cfg.command not in COMMANDS:
        raise ConfigError(f"command={cfg.command}: expected one of {', '.join(COMMANDS)}")
    if cfg.command == "check":
        return doctor.check(cfg)
    if cfg.command == "browse":
        out = Path(cfg.out or f"browse-{cfg.dataset.name}-{cfg.split}.png")
        path = doctor.browse(cfg, out)
        print(f"wrote {path}")
        return {"path": str(path)}
    if not cfg.out:
        raise ConfigError("rcnn-data convert needs out=DIRECTORY for the COCO JSON files")
    paths = doctor.convert(cfg, Path(cfg.out))
    for p in paths:
        print(f"wrote {p}")
    return {"paths": [str(p) for p in paths]}


@hydra.main(version_base="1.3", config_path="pkg://rcnn_cli.conf", config_name="data")
def _main(cfg: DictConfig) -> None:
    with report_errors():
        run(cfg)


def main() -> None:
    # `rcnn-data check ...` -> `rcnn-data command=check ...` (Hydra takes key=value only)
    if len(sys.argv) > 1 and sys.argv[1] in COMMANDS:
        sys.argv[1] = f"command={sys.argv[1]}"
    _main()


if __name__ == "__main__":
    main()
