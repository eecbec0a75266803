# Shared by the project's scripts (source it from the repository root): cache locations outside the clone,
# the Python venv, and building + installing the wheel. Everything works with the caches empty.

cache=${DL_DRIVER_CACHE:-/var/cache/dl-driver}
mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ] || cache="$PWD/.cache"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache/target}
venv=${DL_DRIVER_VENV:-$cache/venv}

step() { printf '\n== %s\n' "$*"; }

# ensure_venv PACKAGE...: creates the venv if missing and installs the packages into it, with what install_wheel
# needs: maturin, ziglang (zig links the extension against glibc 2.17's symbols) and auditwheel (checks it).
ensure_venv() {
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q "maturin>=1.9.4,<2" "ziglang>=0.17.1,<0.18" "auditwheel>=6.1" "$@"
}

# install_wheel: builds the sdist, checks it holds every file a build needs, builds the release wheel from it (the
# manylinux policy of pyproject.toml's [tool.maturin] compatibility, linked by zig against that glibc), checks the
# wheel's tag with auditwheel and installs it into the venv. The sdist is unpacked into $CARGO_TARGET_DIR/sdist-src,
# where only changed files are rewritten, so cargo rebuilds what changed and no more.
install_wheel() {
  local dist src=$CARGO_TARGET_DIR/sdist-src
  dist=$(mktemp -d)
  "$venv/bin/maturin" sdist --out "$dist"
  "$venv/bin/python" scripts/check_dist.py sdist "$dist"/dl_driver-*.tar.gz
  "$venv/bin/python" scripts/check_dist.py unpack "$dist"/dl_driver-*.tar.gz "$src"
  (cd "$src" && PATH="$venv/bin:$PATH" "$venv/bin/maturin" build --release --locked --zig --out "$dist")
  "$venv/bin/python" scripts/check_dist.py wheel "$dist"/dl_driver-*.whl
  "$venv/bin/python" -m pip install -q --force-reinstall --no-deps "$dist"/dl_driver-*.whl
  rm -rf "$dist"
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
