#!/bin/sh
# Build a small x86_64 kernel for the pstore/blk oracle from an unpacked source tree:
# tinyconfig plus the fragments (default pstore.config), checked option by option after
# olddefconfig.
# usage: build-kernel.sh SRC_DIR [FRAGMENT...]   (the result is SRC_DIR/arch/x86/boot/bzImage)
set -eu
src=$1; shift
here=$(cd "$(dirname "$0")" && pwd)
[ $# -gt 0 ] || set -- "$here/pstore.config"
frags=""; for f in "$@"; do frags="$frags $(realpath "$f")"; done
cd "$src"
# 5.10's PSTORE_BLK "depends on BROKEN" (5.14/5.15 upstream too): drop that line.
sed -i '/^config PSTORE_BLK$/,/^config /{/depends on BROKEN/d}' fs/pstore/Kconfig
make -s tinyconfig
./scripts/kconfig/merge_config.sh -m .config $frags >/dev/null
make -s olddefconfig
missing=0
for opt in $(sed -n 's/^\(CONFIG_[A-Z0-9_]*\)=y$/\1/p' $frags); do
    grep -q "^$opt=y" .config || { echo "not set: $opt" >&2; missing=1; }
done
[ "$missing" = 0 ] || exit 1
nice -n 10 make -s -j2 bzImage
ls -l arch/x86/boot/bzImage
