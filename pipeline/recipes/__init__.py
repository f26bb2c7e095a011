"""Study recipes: one YAML file per paper with every setting the paper states, as params overrides.

Each setting names what the paper states and the ``params.yaml`` values that reproduce it, or,
where none can, why. ``crackops COMMAND --recipe NAME`` applies a recipe before any ``-S``;
``crackops recipe NAME`` prints its table and ``--dvc-args`` the ``-S key=value`` lines that
``dvc exp run`` takes (``crackops recipe cracksam --dvc-args | xargs dvc exp run``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import CrackopsError
from pipeline.params import format_value, overrides

RECIPES_DIR = Path(__file__).parent


class RecipeError(CrackopsError):
    """A recipe that does not exist or does not follow the recipe layout."""


@dataclass(frozen=True)
class Setting:
    """One setting of a paper: its words, the params that reproduce it, and any difference."""

    name: str
    stated: str
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    source: str
    settings: list[Setting]

    def values(self) -> dict[str, Any]:
        """Every params key the recipe sets, in file order."""
        return {key: value for setting in self.settings for key, value in setting.params.items()}

    def overrides(self) -> list[str]:
        """``key=value`` per key, unquoted: what ``-S`` receives after the shell."""
        return [f"{key}={format_value(value)}" for key, value in self.values().items()]

    def dvc_args(self) -> str:
        """``-S key=value`` lines (shell-quoted where needed) for ``xargs dvc exp run``."""
        return "".join(f"-S {item}\n" for item in overrides(self.values()))

    def table(self) -> str:
        """The recipe as a Markdown table: stated setting, recipe value, where the two differ."""
        rows = ["| setting | the paper | recipe (`params.yaml`) | difference |", "|---|---|---|---|"]
        for setting in self.settings:
            value = ", ".join(f"`{key}={format_value(item)}`" for key, item in setting.params.items()) or "—"
            rows.append(f"| {setting.name} | {setting.stated} | {value} | {setting.note or '—'} |")
        return "\n".join(rows)


def recipe_names() -> list[str]:
    return sorted(path.stem for path in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name: str) -> Recipe:
    """The recipe ``pipeline/recipes/<name>.yaml`` (or a YAML file of the same layout)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise RecipeError(f"no recipe {name!r}; shipped: {', '.join(recipe_names())}")
    try:
        tree = yaml.safe_load(path.read_text())
        settings = [Setting(name=item["setting"], stated=str(item["stated"]), params=dict(item.get("params") or {}),
                            note=str(item.get("note") or "")) for item in tree["settings"]]
        return Recipe(name=path.stem, title=tree["title"], source=tree["source"], settings=settings)
    except (yaml.YAMLError, KeyError, TypeError) as error:
        raise RecipeError(f"{path}: not a recipe (needs title, source and settings with setting, stated, "
                          f"params, note): {error!r}") from None
