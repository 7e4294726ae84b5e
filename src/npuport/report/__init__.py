"""The `report_model` and `report_index` stages: Markdown reports, plots, verdicts."""
