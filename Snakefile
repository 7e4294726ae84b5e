from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/introspect.smk"
include: "workflow/rules/repair_config.smk"
include: "workflow/rules/fuse.smk"
include: "workflow/rules/env_probe.smk"
include: "workflow/rules/smoke.smk"
include: "workflow/rules/baseline.smk"
include: "workflow/rules/report.smk"


localrules:
    report,


rule report:
    default_target: True
    input:
        "results/report.md",
