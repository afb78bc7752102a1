#!/usr/bin/env bash
# Build the `edgelora` Python wheel and run its tests in a fresh virtual environment.
#
#   bash targets/python/build_and_test.sh [pytest args...]
#
# Needs Rust (the repository's toolchain), python3 with the venv module, and PyPI for maturin,
# pytest and numpy. Non-interactive; the venv and the wheel live in a temporary directory that
# is removed at the end. Cargo builds into the repository's target/ (or $CARGO_TARGET_DIR), so
# a second run only relinks. The tests compare with the release CLI, built if missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-python3}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/edgelora-py.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

echo "== python: venv in $tmp/venv ($("$py" --version))"
venv_py="$tmp/venv/bin/python"
pip=("$venv_py" -m pip)
if ! "$py" -m venv "$tmp/venv" >/dev/null 2>&1; then
  # Debian's python3 without python3-venv has no ensurepip: make the venv bare and install
  # into it with the system pip, or get python3-venv where we may.
  rm -rf "$tmp/venv"
  if "$py" -m pip --version >/dev/null 2>&1; then
    echo "   (no ensurepip: a venv without pip, filled by the system pip)"
    "$py" -m venv --without-pip "$tmp/venv"
    pip=("$py" -m pip --python "$venv_py")
  elif command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "   (no ensurepip: installing python3-venv)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    "$py" -m venv "$tmp/venv"
  else
    echo "error: '$py -m venv' fails and there is no pip; install python3-venv (Debian) and rerun" >&2
    exit 1
  fi
fi
"${pip[@]}" install --quiet --disable-pip-version-check maturin pytest numpy
echo "   installed: $("${pip[@]}" list --disable-pip-version-check 2>/dev/null | grep -Ei '^(maturin|pytest|numpy) ' | tr -s ' ' | paste -sd, -)"

echo "== python: maturin build --release (target dir $CARGO_TARGET_DIR)"
(cd "$here" && "$tmp/venv/bin/maturin" build --release --quiet --interpreter "$venv_py" --out "$tmp/wheels")
wheel="$(ls "$tmp"/wheels/edgelora-*.whl)"
echo "   wheel: $(basename "$wheel")"

echo "== python: pip install the wheel"
"${pip[@]}" install --quiet --disable-pip-version-check "$wheel"
# The typed package: the stub and the PEP 561 marker are in the wheel.
"$venv_py" - "$wheel" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
for want in ("edgelora/__init__.pyi", "edgelora/py.typed"):
    assert want in names, f"{want} missing from the wheel: {names}"
print("   wheel holds edgelora/__init__.pyi and edgelora/py.typed")
EOF

echo "== python: pytest targets/python/tests (from $tmp, so the installed wheel is what runs)"
cd "$tmp"
"$venv_py" -m pytest -q -p no:cacheprovider "$here/tests" "$@"
