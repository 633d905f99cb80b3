#!/usr/bin/env bash
# Set-up and entry point for a fresh machine: `./dev.sh demo` runs the main job, `./dev.sh test` the test suite.
# Both create (or reuse) the local virtual environment .venv with the pinned dependencies first.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VENV=.venv
STAMP=$VENV/.installed-requirements

# Shared libraries bpy (Blender as a Python module) links against; present on most desktops, not on bare servers.
BPY_LIBS="libx11-6 libxi6 libxxf86vm1 libxfixes3 libxrender1 libxkbcommon0 libsm6 libice6 libgl1 libglx0 libegl1 libxext6 libgomp1"
ensure_system_libraries() {
    command -v dpkg >/dev/null || return 0
    local missing=""
    for pkg in $BPY_LIBS; do dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"; done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq --no-install-recommends $missing
    else
        echo "note: Blender export needs these system packages:$missing (sudo apt-get install$missing)" >&2
    fi
}

ensure_venv() {
    if [ -x "$VENV/bin/python" ] && cat requirements.txt requirements-nodeps.txt | cmp -s - "$STAMP" 2>/dev/null; then return 0; fi
    ensure_system_libraries
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q -r requirements.txt
    "$VENV/bin/python" -m pip install -q --no-deps -r requirements-nodeps.txt
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
    cat requirements.txt requirements-nodeps.txt > "$STAMP"
}

command=${1:-}
shift || true
case "$command" in
    demo) ensure_venv; exec "$VENV/bin/lvd" demo "$@" ;;
    test) ensure_venv; exec "$VENV/bin/python" -m pytest -q "$@" ;;
    quick) ensure_venv; exec "$VENV/bin/python" -m pytest -q -m "not slow" "$@" ;;  # the loop while editing
    *) echo "usage: ./dev.sh demo [--out DIR] | ./dev.sh test [pytest args] | ./dev.sh quick [pytest args]" >&2; exit 2 ;;
esac
