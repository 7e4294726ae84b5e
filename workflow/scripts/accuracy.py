"""accuracy stage: the engine's run of the accuracy tasks (bench stage) gated against the reference's
(accuracy_reference stage) -> accuracy.json."""

from pathlib import Path

from npuport.accuracy.accuracy import RUN_RECORD, AccuracySettings, run_accuracy
from npuport.core.atomic import read_json, write_json
from npuport.core.stage import run_stage


def main(smk):
    doc = run_accuracy(
        engine_run=read_json(Path(smk.input.engine) / RUN_RECORD),
        reference_run=read_json(Path(smk.input.reference) / RUN_RECORD),
        settings=AccuracySettings.from_config(smk.params.accuracy),
    )
    write_json(smk.output[0], doc)


if __name__ == "__main__":
    run_stage("accuracy", snakemake.log[0], lambda: main(snakemake))
