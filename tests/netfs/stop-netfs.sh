#!/bin/bash
# Stop what start-netfs.sh started: unmount the GlusterFS and sshfs mounts, stop the volume, glusterd,
# the brick process and the sshd. Idempotent; the volume definition, the brick's files, the exported
# directory and the ssh keys stay (under /var/lib/hopt-netfs), so the next start is quick.
set -uo pipefail

STATE=/var/lib/hopt-netfs
RUN=/run/hopt-netfs
VOLUME=hopt
MOUNTS=(/mnt/hopt-gluster-a /mnt/hopt-gluster-b
    /mnt/hopt-sshfs-a /mnt/hopt-sshfs-b /mnt/hopt-sshfs-nocache /mnt/hopt-sshfs-nocache-b)

[[ $(id -u) == 0 ]] || { echo "stop-netfs: run as root" >&2; exit 1; }

# shellcheck source=../daemons.sh
. "$(dirname "${BASH_SOURCE[0]}")/../daemons.sh"

mounted() { awk -v mp="$1" '$2 == mp {found = 1} END {exit !found}' /proc/mounts; }

fuse_daemons() { # the pids of the glusterfs/sshfs client processes serving our mount points
    local pid cmd mp
    for pid in $(pgrep -x 'glusterfs|sshfs'); do
        cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
        for mp in "${MOUNTS[@]}"; do
            [[ " $cmd " == *" $mp "* ]] && { echo "$pid"; break; }
        done
    done
}

for mp in "${MOUNTS[@]}"; do
    for _ in 1 2 3 4; do
        mounted "$mp" || break
        timeout 10 umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
    done
done
# The client processes exit once unmounted; a lazily unmounted, busy mount keeps its daemon: end it.
for _ in $(seq 25); do [[ -z $(fuse_daemons) ]] && break; sleep 0.2; done
for pid in $(fuse_daemons); do kill "$pid" 2>/dev/null; done

if alive "$RUN/glusterd.pid" glusterd; then
    timeout 60 gluster --mode=script volume stop "$VOLUME" >/dev/null 2>&1 || true
fi
stop "$RUN/glusterd.pid" glusterd
for f in /var/run/gluster/vols/"$VOLUME"/*.pid; do # a brick left running without glusterd
    [[ -e $f ]] && { stop "$f" glusterfsd; rm -f "$f"; }
done
stop "$RUN/sshd.pid" sshd
echo "netfs stopped"
