"""accuracy stage: the lm-eval tasks on the reference (transformers) and the paired gate against the engine's run
of the bench stage -> accuracy.json, accuracy/reference/."""

from pathlib import Path

from npuport.accuracy.accuracy import RUN_RECORD, AccuracySettings, run_accuracy
from npuport.core.atomic import atomic_dir, read_json, write_json
from npuport.core.settings import BaselineSettings
from npuport.core.stage import run_stage


def main(smk):
    baseline = BaselineSettings.from_config(smk.params.baseline)
    with atomic_dir(smk.output.reference) as reference:
        doc = run_accuracy(
            Path(smk.input.model).resolve(),
            engine_run=read_json(Path(smk.input.engine) / RUN_RECORD),
            settings=AccuracySettings.from_config(smk.params.accuracy),
            include_path=Path(smk.params.include_path) if smk.params.include_path else None,
            dtype=smk.params.reference_dtype,
            device=baseline.device,
            threads=smk.threads,
            max_length=smk.params.max_model_len,
            output_dir=reference,
            published_dir=Path(smk.output.reference).resolve(),
        )
        write_json(reference / RUN_RECORD, doc["reference"])
    write_json(smk.output.accuracy, doc)


if __name__ == "__main__":
    run_stage("accuracy", snakemake.log[0], lambda: main(snakemake))
