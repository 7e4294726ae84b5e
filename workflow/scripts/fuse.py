from npuport.core.atomic import read_json
from npuport.core.settings import parse_size
from npuport.core.stage import run_stage
from npuport.weights.fuse import fuse


def main(smk):
    settings = smk.params.fuse
    fuse(
        smk.input.download,
        read_json(smk.input.config),
        read_json(smk.input.introspect),
        smk.output[0],
        mode=settings["mode"],
        group_size=settings["group_size"],
        max_shard_size=parse_size(settings["max_shard_size"]),
        dtype=settings.get("dtype", "keep"),
        minicpm=settings.get("minicpm", "auto"),
    )


if __name__ == "__main__":
    run_stage("fuse", snakemake.log[0], lambda: main(snakemake))
