#!/usr/bin/env bash
# Builds the sluice image (default tag sluice:dev) from this checkout without pulling any image:
# `cargo build --release` makes `sluice` and `sluicectl`, this script stages them with exactly
# the shared libraries they link (as `ldd` lists them) and the dynamic loader in docker/rootfs/,
# and `docker build` copies that tree into an image `FROM scratch`.
#
#   docker/build.sh                    build the binaries, then the image
#   docker/build.sh --bin-dir DIR      take sluice and sluicectl from DIR (no cargo)
#   docker/build.sh --tag NAME:TAG     another tag (also: SLUICE_IMAGE)
#
# CARGO_TARGET_DIR is honoured. Nothing here needs root or a registry.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
tag=${SLUICE_IMAGE:-sluice:dev}
bin_dir=""
# The image's user: not root, and a uid no distribution hands out to its own accounts.
uid=10001

while [[ $# -gt 0 ]]; do
    case $1 in
        --bin-dir) bin_dir=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        -h | --help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

if [[ -z $bin_dir ]]; then
    (cd "$root" && cargo build --release --locked --bin sluice --bin sluicectl)
    bin_dir=${CARGO_TARGET_DIR:-$root/target}/release
fi
for b in sluice sluicectl; do
    [[ -x $bin_dir/$b ]] || { echo "build.sh: no $bin_dir/$b" >&2; exit 1; }
done

rootfs=$here/rootfs
owned=$here/rootfs-owned
rm -rf "$rootfs" "$owned"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/sluice" "$rootfs/tmp" \
    "$owned/var/lib/sluice" "$owned/certs"
chmod 1777 "$rootfs/tmp"

# The binaries, without their debug line tables (the release profile keeps them for local
# profiling; the image only needs symbols for panic backtraces).
for b in sluice sluicectl; do
    objcopy --strip-debug "$bin_dir/$b" "$rootfs/usr/local/bin/$b"
done

# Exactly the libraries these link, at the paths the loader looks for them, and the loader at
# the path written in the binaries' PT_INTERP. `ldd` prints `name => /path (addr)` for
# libraries and `/path (addr)` for the loader; the vDSO has no file.
libs=$(for b in usr/local/bin/sluice usr/local/bin/sluicectl; do ldd "$rootfs/$b"; done |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
for lib in $libs; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done
interp=$(readelf -l "$rootfs/usr/local/bin/sluice" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
[[ -f $rootfs$interp ]] || { echo "build.sh: loader $interp not staged" >&2; exit 1; }

# Name service: getaddrinfo reads /etc/hosts (compose writes it) then DNS (Docker's resolver in
# /etc/resolv.conf). glibc >= 2.34 has the files and dns modules inside libc.so.6, so no
# libnss_*.so is needed.
cat > "$rootfs/etc/nsswitch.conf" <<'NSS'
passwd: files
group: files
hosts: files dns
NSS
cat > "$rootfs/etc/passwd" <<PASSWD
root:x:0:0:root:/:/sbin/nologin
sluice:x:$uid:$uid:sluice:/var/lib/sluice:/sbin/nologin
PASSWD
cat > "$rootfs/etc/group" <<GROUP
root:x:0:
sluice:x:$uid:
GROUP

# `docker build` must not send target/ or the sources: the context is docker/ and
# .dockerignore keeps only the two staged trees.
docker build --tag "$tag" --build-arg "UID=$uid" "$here"
echo "built $tag:"
docker image ls "$tag"
