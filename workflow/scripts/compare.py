from npuport.compare.compare import compare
from npuport.core.atomic import read_json, write_json
from npuport.core.settings import CompareSettings
from npuport.core.stage import run_stage


def main(smk):
    document = compare(
        read_json(smk.input.smoke),
        read_json(smk.input.baseline),
        smk.input.model,
        CompareSettings.from_config(smk.params.compare),
        capture_dir=smk.input.capture,
        trust_remote_code=bool(smk.params.trust_remote_code),
    )
    write_json(smk.output[0], document)


if __name__ == "__main__":
    run_stage("compare", snakemake.log[0], lambda: main(snakemake))
