from npuport.core.atomic import write_json
from npuport.core.settings import BaselineSettings, EngineSettings, GenerationSettings
from npuport.core.stage import run_stage
from npuport.engines.baseline import run_baseline


def main(smk):
    doc = run_baseline(
        smk.input.model,
        baseline=BaselineSettings.from_config(smk.params.baseline),
        generation=GenerationSettings.from_config(smk.params.generation),
        max_model_len=EngineSettings.from_config(smk.params.engine).max_model_len,
        trust_remote_code=bool(smk.params.trust_remote_code),
    )
    write_json(smk.output[0], doc)


if __name__ == "__main__":
    run_stage("baseline", snakemake.log[0], lambda: main(snakemake))
