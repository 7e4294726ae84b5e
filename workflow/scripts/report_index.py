from npuport.core.stage import run_stage
from npuport.report.report_index import write_index


def main(smk):
    write_index(
        smk.output[0],
        models=list(smk.params.models),
        reports=[str(p) for p in smk.input.reports],
        summaries=[str(p) for p in smk.input.summaries],
        language=smk.params.language,
    )


if __name__ == "__main__":
    run_stage("report_index", snakemake.log[0], lambda: main(snakemake))
