#!/usr/bin/env bash
# Make a Docker daemon and a tiny busybox test image available for the
# integration tests (tests/integration/test_docker.py).
#
# Usage:
#   .ci/docker-test-image.sh [start]   # start dockerd if none answers, build image
#   .ci/docker-test-image.sh stop      # stop the dockerd that `start` launched
#
# `start` prints `export STYXCACHE_TEST_IMAGE=<tag>` as its last stdout line, so
# a developer can run:  eval "$(.ci/docker-test-image.sh | tail -n 1)"
#
# Needs: docker.io (dockerd + docker CLI) and busybox-static, run as root.
# Environment knobs (all optional):
#   STYXCACHE_TEST_IMAGE      image tag to create   (styxcache-test/busybox:1)
#   STYXCACHE_DOCKERD_LOG     daemon log file        (/tmp/styxcache-dockerd.log)
#   STYXCACHE_DOCKERD_PIDFILE pid of the daemon we start (/tmp/styxcache-dockerd.pid)
#   STYXCACHE_DOCKER_WAIT     seconds to wait for the daemon (60)
#   STYXCACHE_REBUILD_IMAGE   1 = rebuild the image even if the tag exists
#   STYXCACHE_DOCKERD_ARGS    extra dockerd arguments for the first attempt
set -euo pipefail

IMAGE="${STYXCACHE_TEST_IMAGE:-styxcache-test/busybox:1}"
LOG="${STYXCACHE_DOCKERD_LOG:-/tmp/styxcache-dockerd.log}"
PIDFILE="${STYXCACHE_DOCKERD_PIDFILE:-/tmp/styxcache-dockerd.pid}"
WAIT="${STYXCACHE_DOCKER_WAIT:-60}"

log() { echo "[docker-test-image] $*" >&2; }

daemon_answers() { docker info >/dev/null 2>&1; }

# Launch dockerd with the given extra arguments; succeed once `docker info`
# answers, fail (return 1) if the daemon dies during start-up.
launch_daemon() {
    log "starting dockerd $* (log: $LOG)"
    # setsid: the daemon must not share our process group, so a Ctrl-C in the
    # caller's terminal does not kill it half-way through a test run.
    setsid dockerd "$@" >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    local waited=0
    until daemon_answers; do
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            log "dockerd exited during start-up; last log lines:"
            tail -n 20 "$LOG" >&2 || true
            rm -f "$PIDFILE"
            return 1
        fi
        if [ "$waited" -ge "$WAIT" ]; then
            log "dockerd did not answer within ${WAIT}s; last log lines:"
            tail -n 30 "$LOG" >&2 || true
            stop_daemon
            exit 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    log "dockerd answers after ${waited}s"
}

start_daemon() {
    if daemon_answers; then
        log "a Docker daemon already answers; using it"
        return 0
    fi
    command -v dockerd >/dev/null || { log "dockerd not found (apt-get install docker.io)"; exit 1; }
    : >"$LOG"
    # shellcheck disable=SC2086  # STYXCACHE_DOCKERD_ARGS is a word list
    launch_daemon ${STYXCACHE_DOCKERD_ARGS:-} && return 0
    # Inside another container overlayfs-on-overlayfs is often refused and
    # iptables may be unavailable; the tests need neither, so retry plainly.
    log "retrying with the vfs storage driver and without iptables"
    launch_daemon --storage-driver=vfs --iptables=false && return 0
    log "could not start dockerd; see $LOG"
    exit 1
}

stop_daemon() {
    [ -f "$PIDFILE" ] || { log "no pidfile $PIDFILE: nothing we started"; return 0; }
    local pid
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
        log "stopping dockerd (pid $pid)"
        kill -TERM "$pid"
        # dockerd stops its containerd child itself; give it a bounded time.
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 1
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "dockerd still alive after 30s; sending KILL"
            kill -KILL "$pid" || true
        fi
    fi
    rm -f "$PIDFILE"
}

build_image() {
    if [ "${STYXCACHE_REBUILD_IMAGE:-0}" != "1" ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
        log "image $IMAGE already present"
        return 0
    fi
    local busybox
    busybox="$(command -v busybox || true)"
    [ -n "$busybox" ] || { log "busybox not found (apt-get install busybox-static)"; exit 1; }
    if ! file_is_static "$busybox"; then
        log "$busybox is dynamically linked; install busybox-static"
        exit 1
    fi
    local root
    root="$(mktemp -d)"
    # shellcheck disable=SC2064  # expand $root now: it is local to this function
    trap "rm -rf '$root'; trap - RETURN" RETURN
    mkdir -p "$root/bin" "$root/tmp" "$root/etc"
    chmod 1777 "$root/tmp"
    cp "$busybox" "$root/bin/busybox"
    # One symlink per applet the binary really has, at its canonical path.
    while IFS= read -r applet_path; do
        [ -n "$applet_path" ] || continue
        mkdir -p "$root/$(dirname "$applet_path")"
        [ -e "$root/$applet_path" ] || ln -s /bin/busybox "$root/$applet_path"
    done < <("$busybox" --list-full)
    # styxdocker runs `--entrypoint /bin/bash ./run.sh`. Debian's busybox has
    # no bash applet (a symlink named bash would fail with "applet not
    # found"), so /bin/bash is a shim that hands the script to busybox sh.
    # run.sh only holds one shlex-quoted command line, which sh runs fine.
    if [ ! -e "$root/bin/bash" ]; then
        printf '#!/bin/sh\nexec /bin/sh "$@"\n' >"$root/bin/bash"
        chmod 0755 "$root/bin/bash"
    fi
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
    log "importing busybox rootfs as $IMAGE"
    tar -C "$root" -c . | docker import - "$IMAGE" >/dev/null
    # Smoke test exactly the way styxdocker invokes a tool.
    local out
    out="$(docker run --rm --entrypoint /bin/bash "$IMAGE" -c 'echo styxcache-ok')"
    [ "$out" = "styxcache-ok" ] || { log "smoke test failed: got '$out'"; exit 1; }
}

file_is_static() {
    # `file` may be absent on a minimal image; ldd is part of libc-bin.
    ! ldd "$1" >/dev/null 2>&1
}

case "${1:-start}" in
    start)
        start_daemon
        build_image
        log "image id: $(docker image inspect --format '{{.Id}}' "$IMAGE")"
        echo "export STYXCACHE_TEST_IMAGE=$IMAGE"
        ;;
    stop)
        stop_daemon
        ;;
    *)
        log "usage: $0 [start|stop]"
        exit 2
        ;;
esac
