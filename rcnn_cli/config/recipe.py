"""Which recipe presets a composed ``rcnn-train`` config holds, for the start-up log line.

``conf/train.yaml`` picks ``recipe`` from ``${backbone}_${dataset}`` (optional: most pairs have
no file, hence no recipe) and ``experiment`` only when the user names one.
"""

from __future__ import annotations

from importlib.resources import files


def recipe_in_force() -> str:
    """``recipe=...``, ``experiment=...`` as Hydra composed them, or that there is none."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return "composed outside rcnn-train (no Hydra choices)"
    choices = HydraConfig.get().runtime.choices
    recipe = choices.get("recipe")
    if recipe and not (files("rcnn_cli.conf") / "recipe" / f"{recipe}.yaml").is_file():
        recipe = None  # ``optional recipe: ${backbone}_${dataset}`` found no file
    named = [f"recipe={recipe}"] if recipe else []
    if choices.get("experiment"):
        named.append(f"experiment={choices['experiment']}")
    return ", ".join(named) or "none (the plain group defaults)"
