#!/bin/bash
# Stop the two-node SLURM test cluster started by start-cluster.sh: cancel every job, end both nodes (their
# slurmd, mounts and every process in them), the slurmctld, and the submit host's mounts of the shared
# directories. munged and the netfs services stay (tests/slurm and tests/netfs stop them).
set -uo pipefail

export SLURM_CONF=/etc/slurm-hopt2/slurm.conf
RUN=/run/slurm-hopt2

# shellcheck source=../daemons.sh
. "$(dirname "${BASH_SOURCE[0]}")/../daemons.sh"

if alive "$RUN/slurmctld.pid" slurmctld; then
    cancel_jobs
fi
for node in n1 n2; do stop "$RUN/node-$node.pid" unshare; done
stop "$RUN/slurmctld.pid" slurmctld
for mp in /mnt/hopt2-gluster /mnt/hopt2-sshfs; do unmount "$mp"; done
echo "slurm2 stopped"
