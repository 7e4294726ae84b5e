from npuport.core.stage import run_stage
from npuport.report.report_model import write_report


def named(files) -> dict:
    """A Snakemake input/output list as name -> path (a named list of files -> a list of paths)."""
    return {name: [str(f) for f in value] if isinstance(value, list) else str(value) for name, value in files.items()}


def main(smk):
    # The report's own target closes the table of commands: the rule that runs this script writes it.
    targets = [tuple(pair) for pair in smk.params.stage_targets] + [(str(smk.output.report), smk.rule)]
    write_report(
        smk.wildcards.model,
        inputs=named(smk.input),
        outputs=named(smk.output),
        language=smk.params.language,
        configfiles=list(smk.params.configfiles),
        stage_targets=targets,
    )


if __name__ == "__main__":
    run_stage("report_model", snakemake.log[0], lambda: main(snakemake))
