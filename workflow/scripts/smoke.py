from pathlib import Path

from npuport.compare.layer_plan import LayersSettings
from npuport.core.atomic import write_json
from npuport.core.settings import EngineSettings, EvaluationSettings, GenerationSettings
from npuport.core.stage import run_stage
from npuport.engines.deployment import DeploymentsSettings
from npuport.engines.smoke import run_smoke


def main(smk):
    doc = run_smoke(
        smk.input.model,
        engine=EngineSettings.from_config(smk.params.engine),
        generation=GenerationSettings.from_config(smk.params.generation),
        trust_remote_code=bool(smk.params.trust_remote_code),
        evaluation=EvaluationSettings.from_config(smk.params.evaluation),
        evaluation_text=Path(smk.input.evaluation_text).read_text(encoding="utf-8"),
        capture_dir=smk.output.capture,
        # only the capture's size reaches the engine stage: the layers gate reruns the layers stage alone
        layers=LayersSettings.from_config({"eval_tokens": smk.params.layers_eval_tokens}),
        deployments=DeploymentsSettings.from_config(smk.params.deployments),
    )
    # the declared output exists whatever the engine did; empty when nothing was captured
    Path(smk.output.capture).mkdir(parents=True, exist_ok=True)
    write_json(smk.output.smoke, doc)


# vLLM starts its engine processes with "spawn", which re-imports this file as __mp_main__:
# only the real entry point may run the stage.
if __name__ == "__main__":
    run_stage("smoke", snakemake.log[0], lambda: main(snakemake))
