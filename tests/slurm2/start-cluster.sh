#!/bin/bash
# Start (or check) the two-node SLURM test cluster `hopt2` on this machine; idempotent, needs root, no systemd.
# One slurmctld (port 6917) and two slurmd, n1 (port 6921) and n2 (port 6922), each in its own UTS + PID + mount
# namespace, each mounting the GlusterFS volume at /mnt/hopt2-gluster and the sshfs export at /mnt/hopt2-sshfs
# itself; this machine (the submit host) mounts both at the same paths. Clients reach it with
# SLURM_CONF=/etc/slurm-hopt2/slurm.conf; tests/slurm's cluster `hopt` (/etc/slurm/slurm.conf) keeps working.
# Needs munged (tests/slurm/start-cluster.sh) and the netfs services (tests/netfs/start-netfs.sh) running.
# Settings (environment): HOPT_SLURM2_CPUS (per node, default 3), HOPT_SLURM2_TIMEOUT (seconds, default 60).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../daemons.sh
. "$HERE/../daemons.sh"
HOST=$(hostname -s)
CPUS=${HOPT_SLURM2_CPUS:-3}
TIMEOUT=${HOPT_SLURM2_TIMEOUT:-60}
export SLURM_CONF=/etc/slurm-hopt2/slurm.conf
MARKER="# hopt-test-cluster2"
STATE=/var/spool/slurm-hopt2
RUN=/run/slurm-hopt2
LOG=/var/log/slurm-hopt2
NODES=(n1 n2)
export HOPT2_LOG=$LOG HOPT2_GLUSTER=/mnt/hopt2-gluster HOPT2_SSHFS=/mnt/hopt2-sshfs
export HOPT2_SSHFS_EXPORT=root@127.0.0.1:/var/lib/hopt-netfs/sshfs-export
SSH_KEY=/var/lib/hopt-netfs/ssh/client_ed25519
export HOPT2_SSHFS_OPTS="port=${HOPT_NETFS_SSH_PORT:-2222},IdentityFile=$SSH_KEY,IdentitiesOnly=yes,BatchMode=yes\
,StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,LogLevel=ERROR,reconnect,ServerAliveInterval=5\
,ServerAliveCountMax=3,ConnectTimeout=10,allow_other"

die() {
    echo "start-cluster2: $*" >&2
    exit 1
}

die_with_logs() {
    echo "start-cluster2: $*" >&2
    local f
    for f in "$LOG"/*.log; do
        [[ -f $f ]] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root (starts daemons, namespaces and mounts)"
[[ $CPUS =~ ^[1-9][0-9]*$ ]] || die "HOPT_SLURM2_CPUS must be a positive integer (got '$CPUS')"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "HOPT_SLURM2_TIMEOUT must be a positive integer (got '$TIMEOUT')"
command -v slurmd >/dev/null && command -v nsenter >/dev/null && command -v unshare >/dev/null \
    || die "slurmd, unshare or nsenter missing: run tests/slurm/start-cluster.sh first"
munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 \
    || die "munge does not work: run tests/slurm/start-cluster.sh first (it starts munged)"
grep -q '^127\.0\.0\.1.*hopt-gluster' /etc/hosts && [[ -s $SSH_KEY ]] \
    || die "the netfs services are not set up: run tests/netfs/start-netfs.sh first"

render_conf() {
    local mem_mb
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.4)}' /proc/meminfo)
    sed -e "s|@HOST@|$HOST|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM@|$mem_mb|g" \
        -e "s|@STATE@|$STATE|g" -e "s|@RUN@|$RUN|g" -e "s|@LOG@|$LOG|g" "$HERE/slurm.conf.in"
}

node_init() { # node_init NODE: the pid (here) of the node's init, if the node runs
    local unshare_pid init
    alive "$RUN/node-$1.pid" unshare || return 1
    unshare_pid=$(cat "$RUN/node-$1.pid")
    init=$(awk '{print $1}' "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null)
    [[ -n $init ]] && echo "$init"
}

in_node() { # in_node NODE COMMAND...: run COMMAND inside the node (its hostname, pids, mounts)
    local init
    init=$(node_init "$1") || die "node $1 is not running"
    shift
    nsenter -t "$init" -u -p -m -- "$@"
}

stop_nodes() {
    local node
    for node in "${NODES[@]}"; do stop "$RUN/node-$node.pid" unshare; done
}

# Writes the config when it changed, restarting the cluster on it.
update_conf() {
    local new
    new=$(render_conf)
    [[ -e $SLURM_CONF && $(cat "$SLURM_CONF") == "$new" ]] && return 0
    if [[ -e $SLURM_CONF ]] && ! grep -q "^$MARKER" "$SLURM_CONF"; then
        die "$SLURM_CONF exists and was not written by this script; move it away first"
    fi
    stop "$RUN/slurmctld.pid" slurmctld
    stop_nodes
    mkdir -p "$(dirname "$SLURM_CONF")"
    printf '%s\n' "$new" >"$SLURM_CONF.tmp.$$" && mv -f "$SLURM_CONF.tmp.$$" "$SLURM_CONF"
    echo "start-cluster2: wrote $SLURM_CONF" >&2
}

# The submit host (this machine) sees the shared directories at the nodes' paths. A mount that does not answer is
# cleared first: a FUSE mount whose daemon died (as a machine stopped with the cluster up leaves it) fails even
# mkdir -p with ENOTCONN.
mount_submit_host() {
    if ! answers "$HOPT2_GLUSTER" fuse.glusterfs; then
        unmount "$HOPT2_GLUSTER"
        mkdir -p "$HOPT2_GLUSTER"
        mount -t glusterfs -o "log-file=$LOG/mount-gluster-$HOST.log" hopt-gluster:/hopt "$HOPT2_GLUSTER" \
            || die_with_logs "mount -t glusterfs hopt-gluster:/hopt $HOPT2_GLUSTER failed"
    fi
    if ! answers "$HOPT2_SSHFS" fuse.sshfs; then
        unmount "$HOPT2_SSHFS"
        mkdir -p "$HOPT2_SSHFS"
        timeout 30 sshfs "$HOPT2_SSHFS_EXPORT" "$HOPT2_SSHFS" -o "$HOPT2_SSHFS_OPTS" >>"$LOG/sshfs-$HOST.log" 2>&1 \
            || die_with_logs "sshfs mount of $HOPT2_SSHFS failed"
    fi
}

start_node() { # start_node NODE: the node's namespaces and slurmd; only its slurmd when the node runs
    local node=$1
    if node_init "$node" >/dev/null; then
        in_node "$node" bash -c ". '$HERE/../daemons.sh'; alive '$RUN/slurmd-$node.pid' slurmd || slurmd -N '$node'" \
            || die_with_logs "slurmd of node $node did not start again"
        return 0
    fi
    setsid unshare --uts --pid --mount --mount-proc --fork --kill-child -- "$HERE/node.sh" "$node" \
        >>"$LOG/node-$node.log" 2>&1 </dev/null &
    local pid=$! deadline=$((SECONDS + TIMEOUT))
    echo "$pid" >"$RUN/node-$node.pid"
    until node_init "$node" >/dev/null; do # until unshare has exec'd and forked the node's init
        kill -0 "$pid" 2>/dev/null || die_with_logs "node $node did not start (see $LOG/node-$node.log)"
        ((SECONDS < deadline)) || die_with_logs "node $node did not start after ${TIMEOUT}s"
        sleep 0.1
    done
}

wait_nodes_ready() {
    local deadline=$((SECONDS + TIMEOUT)) node state ready
    while ((SECONDS < deadline)); do
        ready=0
        for node in "${NODES[@]}"; do
            node_init "$node" >/dev/null || die_with_logs "node $node ended (see $LOG/node-$node.log)"
            state=$(scontrol -o show node "$node" 2>/dev/null | sed -n 's/.* State=\([^ ]*\).*/\1/p') || true
            case $state in
                *NOT_RESPONDING* | *POWER*) ;;
                *DOWN* | *DRAIN* | *FAIL*) scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
                IDLE* | MIXED* | ALLOCATED*) ready=$((ready + 1)) ;;
            esac
        done
        ((ready == ${#NODES[@]})) && sinfo -h -p debug -o %a 2>/dev/null | grep -qx up && return 0
        sleep 0.5
    done
    die_with_logs "nodes ${NODES[*]} not ready after ${TIMEOUT}s"
}

mkdir -p "$STATE/ctld" "$RUN" "$LOG"
for node in "${NODES[@]}"; do mkdir -p "$STATE/d-$node"; done
update_conf
mount_submit_host
alive "$RUN/slurmctld.pid" slurmctld || slurmctld || die_with_logs "slurmctld did not start"
for node in "${NODES[@]}"; do start_node "$node"; done
wait_nodes_ready
echo "slurm2 ready: cluster hopt2, nodes ${NODES[*]} ($CPUS cpus each), SLURM_CONF=$SLURM_CONF;" \
    "shared at $HOPT2_GLUSTER (glusterfs) and $HOPT2_SSHFS (sshfs) on every node; logs $LOG"
