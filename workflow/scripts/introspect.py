from npuport.atomic import write_json
from npuport.introspect import introspect_checkpoint
from npuport.stage import run_stage


def main(smk):
    document = introspect_checkpoint(smk.input.download, sample_rows=smk.params.introspect["sample_rows"])
    write_json(smk.output[0], document)


if __name__ == "__main__":
    run_stage("introspect", snakemake.log[0], lambda: main(snakemake))
