from pathlib import Path

from npuport.core.stage import run_stage
from npuport.report.report_index import write_index


def main(smk):
    results = Path(smk.output[0]).parent
    write_index(list(smk.params.models), results, smk.output[0], language=smk.params.language)


if __name__ == "__main__":
    run_stage("report_index", snakemake.log[0], lambda: main(snakemake))
