from pathlib import Path

from npuport.index import write_index
from npuport.stage import run_stage


def main(smk):
    results = Path(smk.output[0]).parent
    write_index(list(smk.params.models), results, smk.output[0], language=smk.params.language)


if __name__ == "__main__":
    run_stage("report_index", snakemake.log[0], lambda: main(snakemake))
