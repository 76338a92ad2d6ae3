#!/usr/bin/env bash
# The `comfyui` tests (tests/test_comfy_*.py) against real ComfyUI trees; `make test` runs this after the
# core tests.
#
#   COMFYUI_PATH set:  against that checkout only, with $COMFYUI_PYTHON, else its .venv, else ./.venv
#                      (as the README's by-hand command).
#   otherwise:         against every ComfyUI tree in ../shared/comfyui (v0.3.64, v0.8.0: the oldest version
#                      the pack supports and a current one). The trees are read-only, so each is copied to
#                      .comfyui/<version>/ first. ComfyUI's own requirements go into a separate venv,
#                      .venv-comfyui (rebuilt only when a requirements file changes: a stamp named by their
#                      hash); the packages a tree pins with == (its front end and templates) go into
#                      .venv-comfyui/pinned/<version>/, first on PYTHONPATH for that version's run.
#                      Debian's chromium (the front-end test) is installed when missing and we are root.
#   neither:           says so and exits 0 (the tests would only skip).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PYTEST_ARGS=(-m comfyui tests -p no:cacheprovider)

if [ -n "${COMFYUI_PATH:-}" ]; then
    py=${COMFYUI_PYTHON:-}
    if [ -z "$py" ] && [ -x "$COMFYUI_PATH/.venv/bin/python" ]; then py="$COMFYUI_PATH/.venv/bin/python"; fi
    exec "${py:-.venv/bin/python}" -m pytest "${PYTEST_ARGS[@]}"
fi

SHARED=${COMFY_SHARED:-../shared/comfyui}
if [ ! -d "$SHARED" ]; then
    echo "ComfyUI tests not run: no ComfyUI trees in $SHARED and COMFYUI_PATH is not set"
    exit 0
fi
VERSIONS=$(cd "$SHARED" && ls -d v*/ | tr -d /)
# torch and torchvision must match each other; ComfyUI imports without torchaudio (only its audio nodes
# need it, and they report an import failure that the tests ignore), which saves a 7 GB build.
COMFY_TORCH=${COMFY_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
VENV=.venv-comfyui
STAMP="$VENV/.installed-$(cat requirements.txt requirements-test.txt "$SHARED"/v*/requirements.txt "$0" \
                          | { echo "$COMFY_TORCH"; cat; } | sha256sum | cut -c1-16)"

if [ ! -f "$STAMP" ]; then
    echo "== ComfyUI test venv ($VENV)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q $COMFY_TORCH
    # what every tree needs, less torch and the == pins (those differ per version: see below)
    cat "$SHARED"/v*/requirements.txt | sed 's/#.*//; s/[[:space:]]*$//' | grep -v -E '^$|==' \
        | grep -v -E '^(torch|torchvision|torchaudio)([^A-Za-z0-9_-]|$)' | sort -u > "$VENV/comfyui-requirements.txt"
    "$VENV/bin/python" -m pip install -q -r "$VENV/comfyui-requirements.txt" -r requirements.txt -r requirements-test.txt
    for v in $VERSIONS; do
        grep -E '^[A-Za-z0-9_.-]+==' "$SHARED/$v/requirements.txt" > "$VENV/pinned-$v.txt" || true
        if [ -s "$VENV/pinned-$v.txt" ]; then
            "$VENV/bin/python" -m pip install -q --no-deps --target "$VENV/pinned/$v" -r "$VENV/pinned-$v.txt"
        fi
    done
    touch "$STAMP"
fi

if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing Debian's chromium (front-end test)"
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "(chromium is not installed and cannot be installed here: the front-end test will skip)"
    fi
fi

failed=()
for v in $VERSIONS; do
    echo "== ComfyUI $v"
    rm -rf ".comfyui/$v"
    mkdir -p .comfyui
    cp -r "$SHARED/$v" ".comfyui/$v"
    chmod -R u+w ".comfyui/$v"
    if ! PYTHONPATH="$PWD/$VENV/pinned/$v${PYTHONPATH:+:$PYTHONPATH}" COMFYUI_PATH="$PWD/.comfyui/$v" \
            COMFYUI_PYTHON="$PWD/$VENV/bin/python" "$VENV/bin/python" -m pytest "${PYTEST_ARGS[@]}"; then
        failed+=("$v")
    fi
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "ComfyUI tests failed on: ${failed[*]}"
    exit 1
fi
