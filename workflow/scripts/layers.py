from npuport.compare.layer_plan import LayersSettings
from npuport.compare.layers import compare_layers
from npuport.core.atomic import atomic_dir, read_json, write_json
from npuport.core.stage import run_stage


def main(smk):
    with atomic_dir(smk.output.dumps) as dumps:
        document = compare_layers(
            read_json(smk.input.smoke),
            smk.input.model,
            LayersSettings.from_config(smk.params.layers),
            capture_dir=smk.input.capture,
            reference_dtype=smk.params.reference_dtype,
            trust_remote_code=bool(smk.params.trust_remote_code),
            dumps_dir=dumps,
        )
    write_json(smk.output.layers, document)


if __name__ == "__main__":
    run_stage("layers", snakemake.log[0], lambda: main(snakemake))
