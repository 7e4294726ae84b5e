"""accuracy_reference stage: the lm-eval accuracy tasks on the reference (transformers) -> accuracy/reference/."""

from pathlib import Path

from npuport.accuracy.accuracy import RUN_RECORD, AccuracySettings
from npuport.accuracy.accuracy_reference import run_accuracy_reference
from npuport.core.atomic import atomic_dir, write_json
from npuport.core.settings import BaselineSettings
from npuport.core.stage import run_stage


def main(smk):
    with atomic_dir(smk.output[0]) as reference:
        run = run_accuracy_reference(
            Path(smk.input.model).resolve(),
            settings=AccuracySettings.from_config(smk.params.accuracy),
            include_path=Path(smk.params.include_path) if smk.params.include_path else None,
            dtype=smk.params.reference_dtype,
            device=BaselineSettings.from_config(smk.params.baseline).device,
            threads=smk.threads,
            max_length=smk.params.max_model_len,
            output_dir=reference,
            published_dir=Path(smk.output[0]).resolve(),
        )
        write_json(reference / RUN_RECORD, run)


if __name__ == "__main__":
    run_stage("accuracy_reference", snakemake.log[0], lambda: main(snakemake))
