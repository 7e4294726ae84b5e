from pathlib import Path

from npuport.core.stage import run_stage
from npuport.download.download import download


def main(smk):
    # a local source's relative path is relative to the workflow (two levels above this script)
    download(smk.params.source, smk.output[0], base_dir=Path(smk.scriptdir).resolve().parents[1])


if __name__ == "__main__":
    run_stage("download", snakemake.log[0], lambda: main(snakemake))
