#!/bin/sh
# Debian's own Linux 6.12 for the oracle: the kernel image and the modules the
# initramfs loads (virtio_blk, pstore_zone, pstore_blk, uncompressed for busybox insmod),
# plus oops-module built against the matching headers (Debian's config has no LKDTM).
# Needs bookworm-security in apt's sources and linux-headers-$REL installed.
#   prepare-6.12.sh [REL]   -> $ORACLE_BUILD/6.12/{vmlinuz,modules/,System.map}
set -eu
REL=${1:-6.12.118+deb12-amd64}
here=$(cd "$(dirname "$0")" && pwd)
B=${ORACLE_BUILD:-/work/oracle-build}/6.12
mkdir -p "$B" && cd "$B"
[ -f linux-image-"$REL"-unsigned_*.deb ] || apt-get download "linux-image-$REL-unsigned"
rm -rf x modules && dpkg-deb -x linux-image-"$REL"-unsigned_*.deb x
cp "x/boot/vmlinuz-$REL" vmlinuz
cp "x/boot/System.map-$REL" System.map
mkdir modules
for m in drivers/block/virtio_blk fs/pstore/pstore_zone fs/pstore/pstore_blk; do
    xz -dc "x/lib/modules/$REL/kernel/$m.ko.xz" > "modules/$(basename $m).ko"
done
rm -rf oops && cp -r "$here/oops-module" oops
make -s -C "/usr/src/linux-headers-$REL" M="$B/oops" modules
cp oops/oracle_oops.ko modules/
ls -l vmlinuz modules
