#!/bin/bash
# Stop the one-node SLURM test cluster started by start-cluster.sh: cancel every job, then the daemons.
set -uo pipefail

RUN=/run/slurm-hopt

# shellcheck source=../daemons.sh
. "$(dirname "${BASH_SOURCE[0]}")/../daemons.sh"

if alive "$RUN/slurmctld.pid" slurmctld; then
    cancel_jobs
    scontrol shutdown >/dev/null 2>&1
fi
for _ in $(seq 50); do
    alive "$RUN/slurmctld.pid" slurmctld || alive "$RUN/slurmd.pid" slurmd || break
    sleep 0.2
done
stop "$RUN/slurmctld.pid" slurmctld
stop "$RUN/slurmd.pid" slurmd
stop /run/munge/munged.pid munged
echo "slurm stopped"
