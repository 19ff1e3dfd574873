#!/bin/bash
# The init (pid 1) of one node of the two-node cluster, run by start-cluster.sh inside
# `unshare --uts --pid --mount --mount-proc --fork`: names the node, mounts the shared directories afresh
# (its own FUSE connections, as on another machine), starts the node's slurmd, then reaps orphans until
# SIGTERM; when it exits the kernel ends everything left in the node.
# Usage: node.sh NODENAME (environment: SLURM_CONF, HOPT2_GLUSTER, HOPT2_SSHFS, HOPT2_SSHFS_OPTS, HOPT2_LOG)
set -euo pipefail
node=$1
hostname "$node"
for mp in "$HOPT2_GLUSTER" "$HOPT2_SSHFS"; do  # the copies of the submit host's mounts: not this node's own
    while awk -v mp="$mp" '$2 == mp {found = 1} END {exit !found}' /proc/mounts; do umount -l "$mp"; done
done
mount -t glusterfs -o "log-file=$HOPT2_LOG/mount-gluster-$node.log" hopt-gluster:/hopt "$HOPT2_GLUSTER"
timeout 30 sshfs "$HOPT2_SSHFS_EXPORT" "$HOPT2_SSHFS" -o "$HOPT2_SSHFS_OPTS" >>"$HOPT2_LOG/sshfs-$node.log" 2>&1
slurmd -N "$node"
trap 'exit 0' TERM INT
echo "node $node up"
while :; do
    sleep 3600 &
    wait $! || true
done
