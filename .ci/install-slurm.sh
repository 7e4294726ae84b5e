#!/usr/bin/env bash
# Debian's SLURM daemons and munge, for the single-node test cluster of tests/test_slurm.py.
# A no-op when they are installed; needs root for apt-get (without it the SLURM test is skipped
# and says why).
set -euo pipefail
for tool in slurmctld slurmd munged sbatch squeue scontrol; do
    command -v "$tool" >/dev/null || missing=1
done
[ -z "${missing:-}" ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "install-slurm: not root, cannot apt-get install slurmctld slurmd slurm-client munge" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# The test starts the daemons itself from a temp dir: keep the packages from starting their
# services (a policy-rc.d that already exists is left as it is).
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
