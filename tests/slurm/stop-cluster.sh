#!/bin/bash
# Stop the one-node SLURM test cluster started by start-cluster.sh: cancel every job, then the daemons.
set -uo pipefail

RUN=/run/slurm-hopt

alive() { # alive PIDFILE NAME: the pid file names a live (not zombie) process called NAME
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] \
        && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

stop() { # stop PIDFILE NAME: SIGTERM, then SIGKILL after 10 s
    alive "$1" "$2" || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do alive "$1" "$2" || return 0; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null
}

if alive "$RUN/slurmctld.pid" slurmctld; then
    mapfile -t jobs < <(squeue -h -o %F 2>/dev/null | sort -u)
    if ((${#jobs[@]})); then
        scancel "${jobs[@]}"
        for _ in $(seq 50); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 0.2; done
    fi
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
