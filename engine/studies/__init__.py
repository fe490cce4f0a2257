"""The study's experiments as named presets, a local runner and the report."""

from engine.studies.presets import PRESETS, StudyError, StudyPlan, expand, list_presets

__all__ = ["PRESETS", "StudyError", "StudyPlan", "expand", "list_presets"]
