#!/usr/bin/env bash
# An aarch64 Python (Debian 12's python3 + numpy + pytest) to run the native tests on an aarch64 build of our
# library under qemu-user, on an x86-64 machine:
#   native/arm64-python.sh DIR      then      DIR/python ARGS...   (runs python3 under qemu-aarch64)
# debootstrap --foreign downloads the packages (nothing is configured, no chroot, no binfmt_misc), each .deb is
# unpacked with dpkg-deb -x, and the two links Debian's postinst scripts would make for BLAS/LAPACK are made
# by hand. Pure-Python packages (gguf, llama_cpp's bindings, ...) come from the venv, after the root's own.
# Needs: debootstrap, qemu-user (qemu-aarch64), network to deb.debian.org. Idempotent.
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 DIR" >&2; exit 2; }
for tool in debootstrap qemu-aarch64 dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "$0: needs $tool (Debian: apt-get install debootstrap qemu-user)" >&2; exit 2; }
done
mkdir -p "$1"
DIR=$(cd "$1" && pwd)
PKGS=python3,python3-numpy,python3-pytest,python3-yaml,python3-tqdm,python3-requests,libgomp1
RECIPE="v1 bookworm $PKGS"
if [[ -f $DIR/.complete && $(cat "$DIR/.complete") == "$RECIPE" ]]; then
    echo "arm64-python: $DIR is up to date"
    exit 0
fi
rm -f "$DIR/.complete"

ROOT=$DIR/root
rm -rf "$ROOT"  # another recipe, or an unfinished one
{
    debootstrap --foreign --arch=arm64 --variant=minbase --include="$PKGS" bookworm "$ROOT" \
        http://deb.debian.org/debian >"$DIR/debootstrap.log"
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT"; done
}
ln -sf blas/libblas.so.3 "$ROOT/usr/lib/aarch64-linux-gnu/libblas.so.3"
ln -sf lapack/liblapack.so.3 "$ROOT/usr/lib/aarch64-linux-gnu/liblapack.so.3"

cat >"$DIR/python" <<EOF
#!/usr/bin/env bash
# python3 of the aarch64 root under qemu-aarch64; extra pure-Python packages via RLKV_ARM64_PYTHONPATH
export QEMU_LD_PREFIX="$ROOT"
export PYTHONPATH="$ROOT/usr/lib/python3/dist-packages\${RLKV_ARM64_PYTHONPATH:+:\$RLKV_ARM64_PYTHONPATH}"
exec qemu-aarch64 "$ROOT/usr/bin/python3.11" "\$@"
EOF
chmod +x "$DIR/python"
"$DIR/python" -c "import numpy, pytest, platform; assert platform.machine() == 'aarch64'"
echo "$RECIPE" >"$DIR/.complete"
echo "arm64-python: $DIR/python"
