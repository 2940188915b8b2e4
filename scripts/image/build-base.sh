#!/usr/bin/env bash
# Builds (or reuses) a minimal Debian root file system with python3, venv, pip, tini and tzdata, as a
# tar archive that `podman import` turns into the BASE_IMAGE of the Containerfile. No registry
# is reachable on these machines, so the base comes from Debian's own packages via debootstrap,
# from the mirror apt already uses. Prints the archive's path.
#
#   scripts/image/build-base.sh [CACHE_DIR]
#
# The archive is cached in CACHE_DIR under a name derived from the suite, mirror and package
# list, so a second run skips the ~1 minute debootstrap. Needs root (debootstrap chroots).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
suite=${BOTRIX_IMAGE_TEST_SUITE:-bookworm}
cache_dir=${1:-${BOTRIX_IMAGE_TEST_CACHE:-/var/cache/botrix-image-test}}
# BOTRIX_BASE_EXTRA: more packages, comma-separated (systemd-test.sh adds systemd).
packages=python3,python3-venv,python3-pip,tini,tzdata,ca-certificates${BOTRIX_BASE_EXTRA:+,$BOTRIX_BASE_EXTRA}
recipe_version=1

mirror=$(bash "$here/debian-mirror.sh" "$suite")
key=$(printf '%s\n' "$recipe_version" "$suite" "$mirror" "$packages" "$(uname -m)" \
    | sha256sum | cut -c1-16)
variant=${BOTRIX_BASE_EXTRA:+-extra}
archive="$cache_dir/debian-$suite$variant-$key.tar"

if [ -s "$archive" ]; then
    echo "$archive"
    exit 0
fi

mkdir -p "$cache_dir"
work=$(mktemp -d "$cache_dir/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT

echo "build-base: debootstrap $suite from $mirror ($packages)" >&2
if ! debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    [ -f "$work/rootfs/debootstrap/debootstrap.log" ] \
        && tail -n 30 "$work/rootfs/debootstrap/debootstrap.log" >&2
    echo "build-base: debootstrap failed" >&2
    exit 1
fi

# Trim what an image does not need: downloaded packages, indexes, docs, translations.
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"* \
    "$work/rootfs/usr/share/doc/"* "$work/rootfs/usr/share/man/"* \
    "$work/rootfs/usr/share/locale/"* "$work/rootfs/debootstrap"

tar -C "$work/rootfs" --numeric-owner -cf "$work/base.tar" .
mv "$work/base.tar" "$archive"
echo "$archive"
