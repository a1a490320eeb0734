#!/usr/bin/env bash
# Developer entry point on a fresh Debian machine:
#   ./dev.sh demo    set everything up, then take a generated sample pair through the real daemon
#   ./dev.sh test    set everything up, then run the whole test suite
#   ./dev.sh setup   only set up (.venv with the package, torch CPU build, Debian packages)
#   ./dev.sh lint    ruff
set -euo pipefail
cd "$(dirname "$0")"

TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}   # the pinned CPU build; a looser spec may pull a multi-GB CUDA wheel
VENV=${VENV:-.venv}
BASE_PACKAGES=(python3 python3-venv python3-dev gcc pkg-config libsystemd-dev ffmpeg espeak-ng)
TEST_PACKAGES=(redis-server logrotate rsync systemd procps util-linux acl strace chromium curl fonts-wqy-microhei
               samba smbclient passwd)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "dev.sh: installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

setup() {
    apt_install "${BASE_PACKAGES[@]}" "$@"
    local python=${PYTHON:-python3}
    if [ ! -x "$VENV/bin/python" ]; then
        "$python" -m venv "$VENV"
    fi
    local stamp="$VENV/.lipsyncd-setup"
    local want
    want="$(sha256sum pyproject.toml | cut -d' ' -f1) $TORCH_SPEC"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
        "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
        "$VENV/bin/python" -m pip install -q -e ".[systemd,redis,progress,demo,web,s3,test]"
        echo "$want" > "$stamp"
    fi
    # numba (librosa) compiles once; keep its cache across runs.
    export NUMBA_CACHE_DIR=${NUMBA_CACHE_DIR:-$HOME/.cache/lipsyncd/numba}
}

case "${1:-}" in
    setup) setup ;;
    demo)
        setup
        "$VENV/bin/lipsyncd" demo "${@:2}"
        ;;
    test)
        setup "${TEST_PACKAGES[@]}"
        set +e
        "$VENV/bin/python" -m pytest -ra "${@:2}"
        code=$?
        set -e
        [ "$code" = 5 ] && { echo "dev.sh: no tests were collected"; exit 1; }
        exit "$code"
        ;;
    lint)
        setup
        "$VENV/bin/ruff" check daemon pipeline tests bench
        ;;
    *)
        sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
