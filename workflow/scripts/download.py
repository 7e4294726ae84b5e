from npuport.core.stage import run_stage
from npuport.download.download import download


def main(smk):
    download(smk.params.source, smk.output[0], base_dir=smk.params.base_dir)


if __name__ == "__main__":
    run_stage("download", snakemake.log[0], lambda: main(snakemake))
