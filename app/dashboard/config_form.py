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

from engine.config import ARCHS, BACKENDS, DTYPES, TIERS, WEIGHT_NAMES, Config

CHOICES: dict[str, tuple[str, ...]] = {"arch": ARCHS, "tier": TIERS, "backend": BACKENDS, "dtype": tuple(DTYPES)}
# Shown first; every other field sits in the "All parameters" card.
ESSENTIAL = ("arch", "tier", "epochs", "seed", "n_e", "n_i", "t_ms", "batch_size", "lr", "backend", "device")
GRID_FIELD = "sweep_grid"


def _widget(field: dataclasses.Field, hint: Any) -> pn.widgets.Widget:
    name, default = field.name, field.default
    if name in CHOICES:
        return pn.widgets.Select(name=name, options=list(CHOICES[name]), value=default)
    if name == "trainable":
        return pn.widgets.MultiChoice(name=name, options=list(WEIGHT_NAMES), value=list(default))
    if hint is bool:
        return pn.widgets.Checkbox(name=name, value=default)
    if hint is int:
        return pn.widgets.IntInput(name=name, value=default)
    if hint in (float, float | None):
        placeholder = "from arch" if default is None else ""
        return pn.widgets.FloatInput(name=name, value=default, placeholder=placeholder, format="0[.]0[000000]")
    return pn.widgets.TextInput(name=name, value=str(default))


class ConfigForm:
    """Widgets for every Config field plus an optional sweep grid."""

    def __init__(self) -> None:
        hints = typing.get_type_hints(Config)
        self.widgets = {f.name: _widget(f, hints[f.name]) for f in dataclasses.fields(Config)}
        self.grid = pn.widgets.TextAreaInput(
            name="sweep grid (optional, JSON)", placeholder='{"arch": ["ping", "coba"], "seed": [42, 43, 44]}',
            height=70, sizing_mode="stretch_width")
        self.errors = {name: pn.pane.HTML("", css_classes=["field-error"], visible=False, margin=(0, 10))
                       for name in [*self.widgets, GRID_FIELD]}
        for widget in self.widgets.values():
            widget.sizing_mode = "stretch_width"

    def _field(self, name: str) -> pn.Column:
        widget = self.grid if name == GRID_FIELD else self.widgets[name]
        return pn.Column(widget, self.errors[name], margin=0, sizing_mode="stretch_width")

    def panel(self) -> pn.Column:
        essential = pn.GridBox(*(self._field(n) for n in ESSENTIAL), ncols=2, sizing_mode="stretch_width")
        advanced = pn.Card(title="All parameters", collapsed=True, sizing_mode="stretch_width")

        def fill(event) -> None:
            # built on first expand: ~40 more widgets would slow every first paint
            if not event.new and not advanced.objects:
                rest = [n for n in self.widgets if n not in ESSENTIAL]
                advanced.append(pn.GridBox(*(self._field(n) for n in rest), ncols=2, sizing_mode="stretch_width"))

        advanced.param.watch(fill, "collapsed")
        self._advanced = advanced
        return pn.Column(essential, advanced, self._field(GRID_FIELD), sizing_mode="stretch_width")

    def values(self) -> dict[str, Any]:
        """The config fields that differ from the defaults (so arch-dependent
        defaults still resolve from arch)."""
        defaults = Config.__dataclass_fields__
        chosen = {}
        for name, widget in self.widgets.items():
            value = widget.value
            if name == "trainable":
                value = list(value)
                if tuple(value) == defaults[name].default:
                    continue
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
        if name not in self.errors:
            return False
        if name not in ESSENTIAL and name != GRID_FIELD:
            self._advanced.collapsed = False  # show the field the error is about
        self.errors[name].object, self.errors[name].visible = f"⚠ {message}", True
        (self.grid if name == GRID_FIELD else self.widgets[name]).css_classes = ["invalid"]
        return True

    def clear_errors(self) -> None:
        for pane in self.errors.values():
            pane.object, pane.visible = "", False
        for widget in [*self.widgets.values(), self.grid]:
            widget.css_classes = []
