"""The launch form generated from Config, without a browser."""

from app.dashboard.config_form import ESSENTIAL, ConfigForm


def test_untouched_form_asks_for_the_defaults_and_changed_fields_only():
    form = ConfigForm()
    form.panel()
    assert form.values() == {}
    form.widgets["n_e"].value = 40
    form.widgets["arch"].value = "coba"
    assert form.values() == {"n_e": 40, "arch": "coba"}
    form.widgets["recipe"].value = "seed"  # the study's own model; its fields stay the recipe's
    assert form.values() == {"n_e": 40, "arch": "coba", "recipe": "seed"}


def test_an_error_on_an_advanced_field_opens_the_card_and_marks_the_field():
    form = ConfigForm()
    form.panel()
    assert set(form.widgets) == set(ESSENTIAL)  # the rest are built on demand
    assert form.show_error("config.tau_m_e_ms", "must be > 0, got 0")
    assert not form.advanced.collapsed and "tau_m_e_ms" in form.widgets
    assert form.errors["tau_m_e_ms"].visible and "got 0" in form.errors["tau_m_e_ms"].object
    assert form.widgets["tau_m_e_ms"].css_classes == ["invalid"]
    assert form.show_error("grid.seed", "must be a non-empty list") and form.errors["sweep_grid"].visible
    assert not form.show_error("config", "body is not an object")  # no widget: the caller says it
    form.clear_errors()
    assert not any(pane.visible for pane in form.errors.values())
