from snakemake.utils import min_version, validate

from npuport.core.settings import check_config, require_utf8

min_version("9.0")

require_utf8("config/config.yaml", *workflow.configfiles)


configfile: "config/config.yaml"


check_config(
    config,
    f"{workflow.basedir}/workflow/schemas/config.schema.yaml",
    workflow.configfiles,
)
validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/introspect.smk"
include: "workflow/rules/repair_config.smk"
include: "workflow/rules/fuse.smk"
include: "workflow/rules/env_probe.smk"
include: "workflow/rules/smoke.smk"
include: "workflow/rules/baseline.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/layers.smk"
include: "workflow/rules/bench.smk"
include: "workflow/rules/accuracy.smk"
include: "workflow/rules/report.smk"


localrules:
    report,


rule report:
    default_target: True
    input:
        rules.report_index.output,
