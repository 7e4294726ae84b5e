from pathlib import Path

from npuport.core.stage import run_stage
from npuport.report.report_model import write_report


def main(smk):
    write_report(
        smk.wildcards.model,
        Path(smk.input.smoke).parent,
        smk.output.report,
        smk.output.plots,
        smk.output.summary,
        language=smk.params.language,
        configfiles=list(smk.params.configfiles),
    )


if __name__ == "__main__":
    run_stage("report_model", snakemake.log[0], lambda: main(snakemake))
