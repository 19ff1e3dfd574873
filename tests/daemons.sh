# Shell functions shared by the test scripts that start and stop daemons and mounts (tests/slurm, tests/slurm2,
# tests/netfs).
# Source it; the sourcing script defines die().

alive() { # alive PIDFILE NAME: the pid file names a live (not zombie) process called NAME
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$2" ]] \
        && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
}

stop() { # stop PIDFILE NAME: SIGTERM, then SIGKILL after 10 s; the pid file goes too
    alive "$1" "$2" || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do alive "$1" "$2" || { rm -f "$1"; return 0; }; sleep 0.2; done
    kill -9 "$pid" 2>/dev/null
    rm -f "$1"
}

cancel_jobs() { # cancel_jobs: cancel every job of the cluster SLURM_CONF names, then wait up to 10 s for none
    local jobs
    mapfile -t jobs < <(squeue -h -o %F 2>/dev/null | sort -u)
    ((${#jobs[@]})) || return 0
    scancel "${jobs[@]}"
    for _ in $(seq 50); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 0.2; done
}

apt_install() { # apt_install PACKAGE...: install from Debian without letting dpkg start daemons
    # There is no init system to own them: a policy-rc.d that says no keeps dpkg from starting them.
    local policy=/usr/sbin/policy-rc.d added= ok=1 out
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    out=$(mktemp)
    apt-get update -q >"$out" 2>&1 || ok=
    [[ -n $ok ]] && { apt-get install -y -q --no-install-recommends "$@" >>"$out" 2>&1 || ok=; }
    [[ -n $added ]] && rm -f "$policy"
    [[ -n $ok ]] || { tail -n 20 "$out" >&2; rm -f "$out"; die "apt-get install $* failed"; }
    rm -f "$out"
}

fstype_of() { # fstype_of MOUNTPOINT: the type /proc/mounts gives it (last entry wins), or nothing
    awk -v mp="$1" '$2 == mp {t = $3} END {if (t) print t}' /proc/mounts
}

answers() { # answers MOUNTPOINT FSTYPE: mounted with that type and a stat of its root returns in time
    [[ $(fstype_of "$1") == "$2" ]] && timeout 5 stat -t "$1" >/dev/null 2>&1
}

unmount() { # unmount MOUNTPOINT: every mount stacked there; lazily when busy or dead
    local _
    for _ in 1 2 3 4; do
        [[ -n $(fstype_of "$1") ]] || return 0
        timeout 10 umount "$1" 2>/dev/null || umount -l "$1" 2>/dev/null || true
    done
}
