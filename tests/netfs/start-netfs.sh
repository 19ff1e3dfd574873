#!/bin/bash
# Start (or check) the real network filesystems the netfs tests run on; idempotent, needs root, no systemd.
# Installs glusterfs-server, sshfs and openssh-server when missing, then, all on 127.0.0.1:
#   - glusterd + a one-brick volume `hopt`, FUSE-mounted twice: /mnt/hopt-gluster-a, /mnt/hopt-gluster-b
#   - an sshd of its own, and one exported directory mounted with sshfs four times:
#     /mnt/hopt-sshfs-a, /mnt/hopt-sshfs-b (default caching), /mnt/hopt-sshfs-nocache,
#     /mnt/hopt-sshfs-nocache-b (dir_cache=no,attr_timeout=0,entry_timeout=0)
# and waits until a file written through each `a` mount is read through its `b` mount.
# Settings (environment): HOPT_NETFS_TIMEOUT (seconds, default 60), HOPT_NETFS_SSH_PORT (default 2222).
# See tests/netfs/README.md.
set -euo pipefail
# shellcheck source=../daemons.sh
. "$(dirname "${BASH_SOURCE[0]}")/../daemons.sh"

TIMEOUT=${HOPT_NETFS_TIMEOUT:-60}
SSH_PORT=${HOPT_NETFS_SSH_PORT:-2222}
STATE=/var/lib/hopt-netfs
RUN=/run/hopt-netfs
LOG=/var/log/hopt-netfs
GLUSTER_HOST=hopt-gluster # a name for 127.0.0.1: `gluster volume create` refuses 127.* brick hosts
VOLUME=hopt
BRICK=$STATE/brick/$VOLUME
EXPORT=$STATE/sshfs-export
SSH=$STATE/ssh
GLUSTER_MOUNTS=(/mnt/hopt-gluster-a /mnt/hopt-gluster-b)
SSHFS_CACHED=(/mnt/hopt-sshfs-a /mnt/hopt-sshfs-b)
SSHFS_NOCACHE=(/mnt/hopt-sshfs-nocache /mnt/hopt-sshfs-nocache-b)
NOCACHE_OPTS=dir_cache=no,attr_timeout=0,entry_timeout=0

die() {
    echo "start-netfs: $*" >&2
    exit 1
}

die_with_logs() {
    echo "start-netfs: $*" >&2
    local f
    for f in "$LOG"/*.log /var/log/glusterfs/bricks/*hopt-netfs*.log; do
        [[ -f $f ]] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
    done
    exit 1
}

[[ $(id -u) == 0 ]] || die "run as root (installs packages, starts daemons, mounts filesystems)"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "HOPT_NETFS_TIMEOUT must be a positive integer (got '$TIMEOUT')"
[[ $SSH_PORT =~ ^[1-9][0-9]*$ ]] || die "HOPT_NETFS_SSH_PORT must be a port number (got '$SSH_PORT')"
[[ -c /dev/fuse ]] || die "/dev/fuse is missing: FUSE mounts are impossible here"

install_packages() {
    local missing=()
    command -v glusterd >/dev/null && command -v glusterfs >/dev/null && command -v gluster >/dev/null \
        || missing+=(glusterfs-server)
    command -v sshfs >/dev/null || missing+=(sshfs)
    [[ -x /usr/sbin/sshd ]] || missing+=(openssh-server)
    command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || missing+=(openssh-client)
    ((${#missing[@]})) || return 0
    echo "start-netfs: installing ${missing[*]}" >&2
    apt_install "${missing[@]}"
}

ensure_hosts_entry() {
    grep -Eq "^[[:space:]]*127\.0\.0\.1([[:space:]].*)?[[:space:]]$GLUSTER_HOST([[:space:]]|\$)" /etc/hosts \
        || echo "127.0.0.1 $GLUSTER_HOST # hopt-netfs (tests/netfs/start-netfs.sh)" >>/etc/hosts
}

write_if_changed() { # write_if_changed FILE CONTENT: 0 when FILE changed
    [[ -e $1 && $(cat "$1") == "$2" ]] && return 1
    printf '%s\n' "$2" >"$1.tmp.$$" && mv -f "$1.tmp.$$" "$1"
}

gluster_cli() { timeout 60 gluster --mode=script "$@"; }

start_glusterd() {
    mkdir -p "$STATE/glusterd" "$STATE/brick" "$RUN" "$LOG"
    # A private volfile and working directory: glusterd listens on 127.0.0.1 only, its state stays
    # under $STATE, and /etc/glusterfs and /var/lib/glusterd are left as the package made them.
    write_if_changed "$STATE/glusterd.vol" "volume management
    type mgmt/glusterd
    option working-directory $STATE/glusterd
    option transport-type socket
    option transport.address-family inet
    option transport.socket.bind-address 127.0.0.1
    option transport.socket.listen-port 24007
    option transport.socket.keepalive-time 10
    option transport.socket.keepalive-interval 2
    option transport.socket.read-fail-log off
    option ping-timeout 0
    option event-threads 1
    option max-port 60999
end-volume" && alive "$RUN/glusterd.pid" glusterd && { kill "$(cat "$RUN/glusterd.pid")"; sleep 1; }
    if ! alive "$RUN/glusterd.pid" glusterd; then
        glusterd -f "$STATE/glusterd.vol" -p "$RUN/glusterd.pid" -l "$LOG/glusterd.log" \
            || die_with_logs "glusterd did not start"
    fi
    local deadline=$((SECONDS + TIMEOUT))
    until gluster_cli pool list >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die_with_logs "glusterd does not answer after ${TIMEOUT}s"
        alive "$RUN/glusterd.pid" glusterd || die_with_logs "glusterd died"
        sleep 0.2
    done
}

start_volume() {
    if ! gluster_cli volume info "$VOLUME" >/dev/null 2>&1; then
        # A brick left from an earlier glusterd state carries that volume's id: start it afresh.
        rm -rf "$BRICK"
        mkdir -p "$BRICK"
        gluster_cli volume create "$VOLUME" "$GLUSTER_HOST:$BRICK" force >>"$LOG/gluster-cli.log" 2>&1 \
            || die_with_logs "gluster volume create failed (see $LOG/gluster-cli.log)"
    fi
    if ! gluster_cli volume info "$VOLUME" 2>/dev/null | grep -q '^Status: Started'; then
        gluster_cli volume start "$VOLUME" >>"$LOG/gluster-cli.log" 2>&1 \
            || die_with_logs "gluster volume start failed (see $LOG/gluster-cli.log)"
    fi
    # Started, but its brick process gone (killed by hand): `start force` starts the brick again.
    local deadline=$((SECONDS + TIMEOUT))
    until gluster_cli volume status "$VOLUME" "$GLUSTER_HOST:$BRICK" detail 2>/dev/null \
        | grep -Eq '^Online[[:space:]]*:[[:space:]]*Y'; do
        ((SECONDS < deadline)) || die_with_logs "the brick of volume $VOLUME is not online after ${TIMEOUT}s"
        gluster_cli volume start "$VOLUME" force >>"$LOG/gluster-cli.log" 2>&1 || true
        sleep 0.5
    done
}

mount_gluster() {
    local mp
    for mp in "${GLUSTER_MOUNTS[@]}"; do
        answers "$mp" fuse.glusterfs && continue
        unmount "$mp"
        mkdir -p "$mp"
        mount -t glusterfs -o "log-file=$LOG/mount-$(basename "$mp").log" "$GLUSTER_HOST:/$VOLUME" "$mp" \
            || die_with_logs "mount -t glusterfs $GLUSTER_HOST:/$VOLUME $mp failed"
    done
}

start_sshd() {
    mkdir -p "$SSH" "$EXPORT" "$RUN" "$LOG" /run/sshd
    chmod 700 "$SSH"
    [[ -s $SSH/host_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C hopt-netfs-host -f "$SSH/host_ed25519"
    [[ -s $SSH/client_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -C hopt-netfs-client -f "$SSH/client_ed25519"
    write_if_changed "$SSH/authorized_keys" "$(cat "$SSH/client_ed25519.pub")" || true
    chmod 600 "$SSH/authorized_keys"
    # Root logs in with the client key only; sftp in-process (no external sftp-server needed).
    write_if_changed "$SSH/sshd_config" "ListenAddress 127.0.0.1:$SSH_PORT
HostKey $SSH/host_ed25519
PidFile $RUN/sshd.pid
AuthorizedKeysFile $SSH/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PrintMotd no
UseDNS no
ClientAliveInterval 5
ClientAliveCountMax 6
Subsystem sftp internal-sftp" && alive "$RUN/sshd.pid" sshd && { kill "$(cat "$RUN/sshd.pid")"; sleep 0.5; }
    if ! alive "$RUN/sshd.pid" sshd; then
        if ss -Hltn "sport = :$SSH_PORT" 2>/dev/null | grep -q .; then
            die "port $SSH_PORT on 127.0.0.1 is taken by another program; set HOPT_NETFS_SSH_PORT"
        fi
        /usr/sbin/sshd -t -f "$SSH/sshd_config" || die "sshd rejects $SSH/sshd_config"
        /usr/sbin/sshd -f "$SSH/sshd_config" -E "$LOG/sshd.log" || die_with_logs "sshd did not start"
    fi
}

sshfs_opts() { # the options of every sshfs mount; the nocache ones add $NOCACHE_OPTS
    printf '%s' "port=$SSH_PORT,IdentityFile=$SSH/client_ed25519,IdentitiesOnly=yes,BatchMode=yes"
    printf '%s' ",StrictHostKeyChecking=no,UserKnownHostsFile=/dev/null,LogLevel=ERROR"
    printf '%s' ",reconnect,ServerAliveInterval=5,ServerAliveCountMax=3,ConnectTimeout=10,allow_other"
}

mount_sshfs() {
    local mp opts
    for mp in "${SSHFS_CACHED[@]}" "${SSHFS_NOCACHE[@]}"; do
        answers "$mp" fuse.sshfs && continue
        unmount "$mp"
        mkdir -p "$mp"
        opts=$(sshfs_opts)
        [[ " ${SSHFS_NOCACHE[*]} " == *" $mp "* ]] && opts+=",$NOCACHE_OPTS"
        # sshfs daemonizes once mounted; its errors before that go to the log.
        timeout 30 sshfs "root@127.0.0.1:$EXPORT" "$mp" -o "$opts" >>"$LOG/sshfs.log" 2>&1 \
            || die_with_logs "sshfs mount of $mp failed (see $LOG/sshfs.log)"
    done
}

wait_mounts_answer() { # a file written through each `a` mount is read through its `b` mount
    local deadline=$((SECONDS + TIMEOUT)) token probe pairs=(
        "${GLUSTER_MOUNTS[0]} ${GLUSTER_MOUNTS[1]}"
        "${SSHFS_CACHED[0]} ${SSHFS_CACHED[1]}"
        "${SSHFS_NOCACHE[0]} ${SSHFS_NOCACHE[1]}"
    )
    token="$(hostname)-$$-$RANDOM"
    probe=".hopt-netfs-probe-$token"
    local pair a b
    for pair in "${pairs[@]}"; do
        read -r a b <<<"$pair"
        timeout 10 sh -c 'printf %s "$1" >"$2"' _ "$token" "$a/$probe" 2>/dev/null \
            || die_with_logs "cannot write $a/$probe"
        until [[ $(timeout 5 cat "$b/$probe" 2>/dev/null) == "$token" ]]; do
            ((SECONDS < deadline)) || die_with_logs "$a/$probe is not visible through $b after ${TIMEOUT}s"
            sleep 0.1
        done
        timeout 10 rm -f "$a/$probe" || true
    done
}

gluster_up() { # fast path: glusterd alive and both mounts answer
    alive "$RUN/glusterd.pid" glusterd || return 1
    local mp
    for mp in "${GLUSTER_MOUNTS[@]}"; do answers "$mp" fuse.glusterfs || return 1; done
}

sshfs_up() {
    alive "$RUN/sshd.pid" sshd || return 1
    local mp
    for mp in "${SSHFS_CACHED[@]}" "${SSHFS_NOCACHE[@]}"; do answers "$mp" fuse.sshfs || return 1; done
}

install_packages
ensure_hosts_entry
if ! gluster_up; then
    start_glusterd
    start_volume
    mount_gluster
fi
if ! sshfs_up; then
    start_sshd
    mount_sshfs
fi
wait_mounts_answer
echo "netfs ready: glusterfs $GLUSTER_HOST:/$VOLUME at ${GLUSTER_MOUNTS[*]}; sshfs 127.0.0.1:$SSH_PORT:$EXPORT" \
    "at ${SSHFS_CACHED[*]} (cached) ${SSHFS_NOCACHE[*]} ($NOCACHE_OPTS); logs $LOG"
