from npuport.index import write_index
from npuport.stage import run_stage

if __name__ == "__main__":
    run_stage(
        "report_index", snakemake.log[0], lambda: write_index(snakemake.params.models, "results", snakemake.output[0])
    )
