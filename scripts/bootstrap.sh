#!/usr/bin/env bash
# Create .venv in the repository root and install ami-bundler with its test extras, plus the
# system tools the tests and the demo use (GNU tar, gzip, openssl, e2fsprogs, sfdisk, qemu-img
# and the xz/zstd/bzip2 compressors that make the image-format test inputs).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
# GRUB 2 for BIOS (boot.img, core modules) lets the bootloader tests run instead of skipping.
[ -d /usr/lib/grub/i386-pc ] || need+=(grub-pc-bin grub2-common)
for tool in tar:tar gzip:gzip openssl:openssl mke2fs:e2fsprogs debugfs:e2fsprogs sfdisk:fdisk \
            grub-mkimage:grub-common qemu-img:qemu-utils xz:xz-utils zstd:zstd bzip2:bzip2 \
            mkfs.xfs:xfsprogs xfs_repair:xfsprogs mkfs.btrfs:btrfs-progs setfattr:attr \
            setfacl:acl losetup:mount; do
    command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool##*:}")
done
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bootstrap: installing ${need[*]}" >&2
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "bootstrap: missing system packages: ${need[*]} (install them, then re-run)" >&2
    fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
