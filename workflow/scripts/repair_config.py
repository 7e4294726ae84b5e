from pathlib import Path

from npuport.core.atomic import read_json, write_json
from npuport.core.stage import run_stage
from npuport.weights.repair_config import repair
from npuport.weights.tokenizer_check import check_checkpoint_tokenizer


def main(smk):
    trust = smk.params.trust_remote_code
    config, report = repair(Path(smk.input.download) / "config.json", read_json(smk.input.introspect), trust)
    report["tokenizer"] = check_checkpoint_tokenizer(smk.input.download, config, trust)
    write_json(smk.output.report, report)
    write_json(smk.output.config, config)


if __name__ == "__main__":
    run_stage("repair_config", snakemake.log[0], lambda: main(snakemake))
