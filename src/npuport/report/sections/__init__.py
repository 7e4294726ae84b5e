"""The report's sections, one module each, named after its heading (templates/report.md.j2 lays them out)."""
