from npuport.core.atomic import write_json
from npuport.core.stage import run_stage
from npuport.weights.introspect import introspect_checkpoint


def main(smk):
    document = introspect_checkpoint(smk.input.download, sample_rows=smk.params.introspect["sample_rows"])
    write_json(smk.output[0], document)


if __name__ == "__main__":
    run_stage("introspect", snakemake.log[0], lambda: main(snakemake))
