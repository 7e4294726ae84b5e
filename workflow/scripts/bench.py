"""bench stage: the serve check, the engine's side of the accuracy tasks and vLLM's serving benchmark over a
concurrency ladder, on one server -> bench.json, bench/, accuracy/engine/."""

from pathlib import Path

from npuport.accuracy.accuracy import RUN_RECORD, AccuracySettings
from npuport.core.atomic import atomic_dir, read_json, write_json
from npuport.core.settings import EngineSettings, GenerationSettings, ServeSettings
from npuport.core.stage import run_stage
from npuport.engines.bench import BenchSettings, run_bench


def main(smk):
    settings = BenchSettings.from_config(smk.params.bench)
    baseline = read_json(smk.input.baseline[0]) if smk.input.baseline else None
    with atomic_dir(smk.output.results) as results, atomic_dir(smk.output.accuracy) as accuracy:
        doc = run_bench(
            smk.input.model,
            smoke=read_json(smk.input.smoke),
            env=read_json(smk.input.env),
            engine=EngineSettings.from_config(smk.params.engine),
            generation=GenerationSettings.from_config(smk.params.generation),
            serve=ServeSettings.from_config(smk.params.serve),
            settings=settings,
            result_dir=results,
            published_dir=Path(smk.output.results).resolve(),
            baseline=baseline,
            baseline_path=smk.input.baseline[0] if smk.input.baseline else None,
            trust_remote_code=bool(smk.params.trust_remote_code),
            accuracy=AccuracySettings.from_config(smk.params.accuracy),
            accuracy_dir=accuracy,
            accuracy_published=Path(smk.output.accuracy).resolve(),
            include_path=smk.params.include_path,
        )
        run = doc["accuracy"]
        write_json(accuracy / RUN_RECORD, run)
        doc["accuracy"] = {key: run.get(key) for key in ("status", "reason", "backend", "command", "wall_s")}
    write_json(smk.output.bench, doc)


# vLLM starts its engine processes with "spawn", which re-imports this file as __mp_main__:
# only the real entry point may run the stage.
if __name__ == "__main__":
    run_stage("bench", snakemake.log[0], lambda: main(snakemake))
