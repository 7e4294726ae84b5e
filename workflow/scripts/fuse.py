from npuport.core.atomic import read_json
from npuport.core.settings import FuseSettings
from npuport.core.stage import run_stage
from npuport.weights.fuse import fuse


def main(smk):
    settings = FuseSettings.from_config(smk.params.fuse)
    fuse(
        smk.input.download,
        read_json(smk.input.config),
        read_json(smk.input.introspect),
        smk.output[0],
        mode=settings.mode,
        group_size=settings.group_size,
        max_shard_size=settings.max_shard_bytes,
        dtype=settings.dtype,
        minicpm=settings.minicpm,
        trust_remote_code=bool(smk.params.trust_remote_code),
    )


if __name__ == "__main__":
    run_stage("fuse", snakemake.log[0], lambda: main(snakemake))
