from npuport.download import download
from npuport.stage import run_stage


def main(smk):
    download(smk.params.source, smk.output[0], base_dir=smk.params.base_dir)


if __name__ == "__main__":
    run_stage("download", snakemake.log[0], lambda: main(snakemake))
