#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs every check and test.
# Works on a fresh machine; caches (cargo target dir, venv, pip) live outside the clone to keep reruns fast.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${DL_DRIVER_CACHE:-/var/cache/dl-driver}
mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ] || cache="$PWD/.cache"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
venv=${DL_DRIVER_VENV:-$cache/venv}

step() { printf '\n== %s\n' "$*"; }

step "toolchain"
if command -v rustup >/dev/null; then rustup component add rustfmt clippy >/dev/null 2>&1 || true; fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "maturin>=1.9.4,<2" "pytest>=8" "hypothesis>=6" "pyyaml>=6"

step "cargo fmt --check"
cargo fmt --all --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
step "cargo test"
cargo test

step "build and install the wheel"
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"$venv/bin/maturin" build --release --out "$wheels"
"$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$wheels"/dl_driver-*.whl

step "pytest"
PATH="$venv/bin:$PATH" "$venv/bin/python" -m pytest "$@"
