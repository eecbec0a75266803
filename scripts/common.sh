# Shared by the project's scripts (source it from the repository root): cache locations outside the clone,
# the Python venv, and building + installing the wheel. Everything works with the caches empty.

cache=${DL_DRIVER_CACHE:-/var/cache/dl-driver}
mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ] || cache="$PWD/.cache"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
venv=${DL_DRIVER_VENV:-$cache/venv}

step() { printf '\n== %s\n' "$*"; }

# ensure_venv PACKAGE...: creates the venv if missing and installs the packages into it.
ensure_venv() {
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "maturin>=1.9.4,<2" "$@"
}

# install_wheel: builds the release wheel and installs it into the venv.
install_wheel() {
  local wheels
  wheels=$(mktemp -d)
  "$venv/bin/maturin" build --release --out "$wheels"
  "$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$wheels"/dl_driver-*.whl
  rm -rf "$wheels"
}

# ensure_dlio_peer: installs DLIO 2.0.0 (the benchmarks' peer) into its own venv, $DLIO_VENV, outside the project's
# dependencies, with ../shared/scripts/dlio-peer.sh.
ensure_dlio_peer() {
  export DLIO_VENV=${DLIO_VENV:-$cache/dlio200}
  local peer=../shared/scripts/dlio-peer.sh
  [ -f "$peer" ] || { echo "needs $peer (the DLIO 2.0.0 installer)" >&2; return 1; }
  bash "$peer"
}

# ensure_fio: installs fio from Debian when missing.
ensure_fio() {
  command -v fio >/dev/null || { apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -q fio >/dev/null; }
}
