from npuport.core.atomic import write_json
from npuport.core.settings import IntrospectSettings
from npuport.core.stage import run_stage
from npuport.weights.introspect import introspect_checkpoint


def main(smk):
    settings = IntrospectSettings.from_config(smk.params.introspect)
    write_json(smk.output[0], introspect_checkpoint(smk.input.download, sample_rows=settings.sample_rows))


if __name__ == "__main__":
    run_stage("introspect", snakemake.log[0], lambda: main(snakemake))
