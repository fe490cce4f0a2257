"""The launch form, generated from the engine's `Config` dataclass.

Widgets follow the field types and defaults, choices come from the engine's own
tuples, and a refusal from the service (`InvalidRequest(field, message)`) is
shown under the field it names. Nothing about a field is written twice.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

import panel as pn

from engine.config import ARCHS, BACKENDS, DTYPES, RECIPES, TIERS, VARIANT_CHOICES, WEIGHT_NAMES, Config

CHOICES: dict[str, tuple[str, ...]] = {"arch": ARCHS, "tier": TIERS, "backend": BACKENDS, "dtype": tuple(DTYPES),
                                       "recipe": RECIPES}
# Shown first; every other field sits in the "All parameters" card.
ESSENTIAL = ("recipe", "arch", "tier", "epochs", "seed", "n_e", "n_i", "t_ms", "batch_size", "lr", "backend",
             "device")
FROM_RECIPE = "(recipe)"  # a variant choice left to the recipe
GRID_FIELD = "sweep_grid"


def _widget(field: dataclasses.Field, hint: Any) -> pn.widgets.Widget:
    name, default = field.name, field.default
    if name in CHOICES:
        return pn.widgets.Select(label=name, options=list(CHOICES[name]), value=default)
    if name == "trainable":
        return pn.widgets.MultiChoice(label=name, options=list(WEIGHT_NAMES), value=list(default))
    if name == "dale_weights":  # None (the recipe's) is told apart from an empty choice by the recipe
        return pn.widgets.MultiChoice(label=f"{name} (empty: the recipe's)", options=["W_in", "W_out"], value=[])
    if name in VARIANT_CHOICES or hint == bool | None:
        options = VARIANT_CHOICES.get(name, (True, False))
        return pn.widgets.Select(label=name, options={FROM_RECIPE: None, **{str(o): o for o in options}}, value=None)
    if hint is bool:
        return pn.widgets.Checkbox(label=name, value=default)
    if hint in (int, int | None):
        return pn.widgets.IntInput(label=name, value=default, placeholder="from recipe" if default is None else "")
    if hint in (float, float | None):
        placeholder = "from recipe / arch" if default is None else ""
        return pn.widgets.FloatInput(label=name, value=default, placeholder=placeholder, format="0[.]0[000000]")
    if hint == str | None:  # init_run: empty is none
        return pn.widgets.TextInput(label=name, value=default or "", placeholder="none")
    return pn.widgets.TextInput(label=name, value=str(default))


class ConfigForm:
    """Widgets for the Config fields plus an optional sweep grid."""

    def __init__(self) -> None:
        self._hints = typing.get_type_hints(Config)
        self._fields = {f.name: f for f in dataclasses.fields(Config)}
        # only the essential fields' widgets exist until "All parameters" opens:
        # ~40 more would slow every first paint of the Runs page
        self.widgets: dict[str, pn.widgets.Widget] = {}
        self.errors: dict[str, pn.pane.HTML] = {}
        self.grid = pn.widgets.TextAreaInput(
            name="sweep grid (optional, JSON)", placeholder='{"arch": ["ping", "coba"], "seed": [42, 43, 44]}',
            height=70, sizing_mode="stretch_width")
        self.advanced = pn.Card(title="All parameters", collapsed=True, sizing_mode="stretch_width")
        self.advanced.param.watch(self._open_advanced, "collapsed")

    def _field(self, name: str) -> pn.Column:
        if name != GRID_FIELD and name not in self.widgets:
            self.widgets[name] = _widget(self._fields[name], self._hints[name])
            self.widgets[name].sizing_mode = "stretch_width"
        self.errors.setdefault(name, pn.pane.HTML("", css_classes=["field-error"], visible=False, margin=(0, 10)))
        widget = self.grid if name == GRID_FIELD else self.widgets[name]
        return pn.Column(widget, self.errors[name], margin=0, sizing_mode="stretch_width")

    def _open_advanced(self, event) -> None:
        if not event.new and not self.advanced.objects:
            rest = [n for n in self._fields if n not in ESSENTIAL]
            self.advanced.append(pn.GridBox(*(self._field(n) for n in rest), ncols=2, sizing_mode="stretch_width"))

    def panel(self) -> pn.Column:
        essential = pn.GridBox(*(self._field(n) for n in ESSENTIAL), ncols=2, sizing_mode="stretch_width")
        return pn.Column(essential, self.advanced, self._field(GRID_FIELD), sizing_mode="stretch_width")

    def values(self) -> dict[str, Any]:
        """The config fields set to other than their defaults (so arch-dependent
        defaults still resolve from arch); fields never shown keep theirs."""
        defaults = Config.__dataclass_fields__
        chosen = {}
        for name, widget in self.widgets.items():
            value = widget.value
            if name in ("trainable", "dale_weights"):
                value = list(value)
                if tuple(value) == defaults[name].default or (name == "dale_weights" and not value):
                    continue
            elif self._hints[name] == str | None and not value.strip():
                continue  # empty: none, the default
            elif value == defaults[name].default:
                continue
            chosen[name] = value
        return chosen

    def sweep_grid(self) -> dict[str, list[Any]] | None:
        """The grid text as a dict, None when empty; ValueError names what is wrong."""
        text = self.grid.value.strip()
        if not text:
            return None
        try:
            grid = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
        if not isinstance(grid, dict) or not grid or not all(isinstance(v, list) and v for v in grid.values()):
            raise ValueError('must be an object of non-empty lists, e.g. {"seed": [42, 43]}')
        return grid

    def show_error(self, field: str, message: str) -> bool:
        """Show `message` under the widget `field` names (n_e, config.n_e, grid.seed);
        False when no widget matches (the caller shows it elsewhere)."""
        name = GRID_FIELD if field.split(".")[0] in ("grid", GRID_FIELD) else field.split(".")[-1]
        if name != GRID_FIELD and name not in self._fields:
            return False
        if name not in self.errors:
            self.advanced.collapsed = False  # builds and shows the field the error is about
        self.errors[name].object, self.errors[name].visible = f"⚠ {message}", True
        (self.grid if name == GRID_FIELD else self.widgets[name]).css_classes = ["invalid"]
        return True

    def clear_errors(self) -> None:
        for pane in self.errors.values():
            pane.object, pane.visible = "", False
        for widget in [*self.widgets.values(), self.grid]:
            widget.css_classes = []
