#!/bin/bash
# Start (or check) a one-node SLURM test cluster on this machine; idempotent, needs root, no systemd.
# Installs slurm-wlm and munge when missing, writes /etc/slurm/slurm.conf from slurm.conf.in, starts
# munged, slurmctld and slurmd in the background, and waits until the node is idle.
# Settings (environment): HOPT_SLURM_CPUS (default: nproc), HOPT_SLURM_TIMEOUT (seconds, default 60).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../daemons.sh
. "$HERE/../daemons.sh"
HOST=$(hostname -s)
CPUS=${HOPT_SLURM_CPUS:-$(nproc)}
TIMEOUT=${HOPT_SLURM_TIMEOUT:-60}
CONF=/etc/slurm/slurm.conf
MARKER="# hopt-test-cluster"
STATE=/var/spool/slurm-hopt
RUN=/run/slurm-hopt
LOG=/var/log/slurm-hopt

die() {
    echo "start-cluster: $*" >&2
    exit 1
}

die_with_logs() {
    echo "start-cluster: $*" >&2
    for f in "$LOG/slurmctld.log" "$LOG/slurmd.log" /var/log/munge/munged.log; do
        [[ -f $f ]] && { echo "--- tail $f" >&2; tail -n 20 "$f" >&2; }
    done
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root (installs packages and starts daemons)"
[[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "HOPT_SLURM_CPUS must be a positive integer (got '$CPUS')"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "HOPT_SLURM_TIMEOUT must be a positive integer (got '$TIMEOUT')"

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        || missing+=(slurm-wlm)
    command -v munged >/dev/null || missing+=(munge)
    ((${#missing[@]})) || return 0
    echo "start-cluster: installing ${missing[*]}" >&2
    apt_install "${missing[@]}"
}

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    if ! alive /run/munge/munged.pid munged; then
        runuser -u munge -- /usr/sbin/munged || die_with_logs "munged did not start"
    fi
    munge -n </dev/null | unmunge >/dev/null || die_with_logs "munge does not work (munge -n | unmunge)"
}

render_conf() {
    local mem_mb
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    sed -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$mem_mb|g" \
        -e "s|@STATE@|$STATE|g" -e "s|@RUN@|$RUN|g" -e "s|@LOG@|$LOG|g" "$HERE/slurm.conf.in"
}

stop_daemon() { # stop_daemon PIDFILE NAME: SIGTERM and wait (running jobs survive; their slurmstepd stays)
    alive "$1" "$2" || return 0
    kill "$(cat "$1")" 2>/dev/null || true
    for _ in $(seq 50); do alive "$1" "$2" || return 0; sleep 0.2; done
    die_with_logs "the old $2 did not stop"
}

# Writes the config when it changed (restarting the daemons on it); jobs in flight survive the restart.
update_conf() {
    local new
    new=$(render_conf)
    if [[ -e $CONF ]] && ! grep -q "^$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script; move it away first"
    fi
    [[ -e $CONF && $(cat "$CONF") == "$new" ]] && return 0
    stop_daemon "$RUN/slurmctld.pid" slurmctld
    stop_daemon "$RUN/slurmd.pid" slurmd
    mkdir -p "$(dirname "$CONF")"
    printf '%s\n' "$new" >"$CONF.tmp.$$" && mv -f "$CONF.tmp.$$" "$CONF"
    echo "start-cluster: wrote $CONF" >&2
}

start_slurm() {
    mkdir -p "$STATE/ctld" "$STATE/d" "$RUN" "$LOG"
    update_conf
    alive "$RUN/slurmctld.pid" slurmctld || slurmctld || die_with_logs "slurmctld did not start"
    alive "$RUN/slurmd.pid" slurmd || slurmd || die_with_logs "slurmd did not start"
}

wait_node_ready() {
    local deadline=$((SECONDS + TIMEOUT)) state=""
    while ((SECONDS < deadline)); do
        state=$(scontrol -o show node "$HOST" 2>/dev/null | sed -n 's/.* State=\([^ ]*\).*/\1/p') || true
        case $state in
            *NOT_RESPONDING* | *POWER*) ;;
            *DOWN* | *DRAIN* | *FAIL*)
                scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
            IDLE* | MIXED* | ALLOCATED*)
                if sinfo -h -p debug -o %a 2>/dev/null | grep -qx up; then return 0; fi ;;
        esac
        sleep 0.5
    done
    die_with_logs "node $HOST not ready after ${TIMEOUT}s (state: ${state:-no answer from slurmctld})"
}

install_packages
start_munge
start_slurm
wait_node_ready
echo "slurm ready: node $HOST, $CPUS cpus, partition debug, config $CONF, logs $LOG"
