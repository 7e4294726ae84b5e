"""env_probe stage: this host's versions, hardware, accelerators, container limits and diagnostics -> env.json."""

import sys

from npuport.core.atomic import write_json
from npuport.core.stage import run_stage
from npuport.env.env_probe import DEFAULT_PACKAGES, probe_environment


def main(output, packages):
    doc = probe_environment(packages=list(packages))
    print(f"platform: {doc['platform']} ({doc['device']}); probe took {doc['probe_seconds']} s")
    for diag in doc["diagnostics"]:
        print(f"{diag['severity']}: {diag['id']}: {diag['summary']}")
    write_json(output, doc)


if __name__ == "__main__":
    if "snakemake" in globals():
        smk = snakemake  # noqa: F821 - injected by Snakemake
        run_stage("env_probe", smk.log[0], lambda: main(smk.output[0], smk.params.packages))
    elif len(sys.argv) == 2:
        run_stage("env_probe", None, lambda: main(sys.argv[1], DEFAULT_PACKAGES))
    else:
        sys.exit("usage: python workflow/scripts/env_probe.py OUT.json")
