#!/bin/sh
# Make every kernel-written case of tests/data/kernels (see README.md here for the
# packages, the kernels and how long each step takes). Run as root (QEMU TCG needs no
# privileges, but the build directory and apt are root's here).
#   make-cases.sh OUT_DIR [CASE_ID_PREFIX]
set -eu
out=$1; only=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
B=${ORACLE_BUILD:-/work/oracle-build}
K61="Linux 6.1.192 (Debian linux-source-6.1 6.1.192-3), tinyconfig + contrib/oracle/pstore.config, PSTORE_BLK and every PSTORE_*_COMPRESS built in"
K510="Linux 5.10.262 (Debian bullseye linux-source-5.10 5.10.262-1, PSTORE_BLK's 'depends on BROKEN' dropped), tinyconfig + contrib/oracle/pstore.config, PSTORE_BLK and every PSTORE_*_COMPRESS built in"
K612="Linux 6.12.118 (Debian bookworm-security linux-image-6.12.118+deb12-amd64-unsigned 6.12.118-1~deb12u1), stock pstore_zone.ko/pstore_blk.ko as modules, oops from contrib/oracle/oops-module"
BLK="pstore_blk.blkdev=/dev/vda pstore_blk.best_effort=y"

case_() {  # ID KERNEL_IMAGE KERNEL_DESC DESC PARAMS OOPSES FILLER [oracle.py options...]
    id=$1; kernel=$2; kdesc=$3; desc=$4; params=$5; oopses=$6; filler=$7; shift 7
    case "$id" in "$only"*) ;; *) return 0 ;; esac
    python3 "$here/oracle.py" --kernel "$kernel" --kernel-desc "$kdesc" --id "$id" \
        --desc "$desc" --params "$params" --oopses "$oopses" --filler "$filler" \
        --out "$out" "$@"
}

# Linux 6.1, each compressor, default 64 KiB zones on 1 MiB
for algo in lzo lz4 lz4hc zstd 842 deflate; do
    case_ "linux6.1-$algo-3oops" "$B/bzImage-6.1" "$K61" \
        "Three oopses after 400 filler lines each, default 64 KiB dmesg zones on a 1 MiB partition, $algo-compressed records." \
        "$BLK pstore_blk.kmsg_size=64 pstore.compress=$algo" 3 text:400
done
# Linux 6.1, small zones: compressed-size limits, the uncompressed fallback, Part2+ refused
case_ linux6.1-kmsg4-zstd-5oops "$B/bzImage-6.1" "$K61" \
    "Five oopses into 4 KiB dmesg zones (bufsize 4044) on a 1 MiB partition, zstd: each dump also makes Part2+ records, which pstore/zone refuses." \
    "$BLK pstore_blk.kmsg_size=4 pstore.compress=zstd" 5 text:50
case_ linux6.1-kmsg4-842-3oops "$B/bzImage-6.1" "$K61" \
    "Three oopses into 4 KiB dmesg zones on a 1 MiB partition, 842 (software lib/842), whose text buffer is only bufsize (4044) bytes." \
    "$BLK pstore_blk.kmsg_size=4 pstore.compress=842" 3 text:50
case_ linux6.1-kmsg4-deflate-random "$B/bzImage-6.1" "$K61" \
    "Three oopses into 4 KiB dmesg zones after random base64 lines: the deflated text does not fit, so the kernel stores the header and the newest text uncompressed (copy_kmsg_to_buffer)." \
    "$BLK pstore_blk.kmsg_size=4 pstore.compress=deflate" 3 random:120
case_ linux6.1-kmsg16-lzo-random "$B/bzImage-6.1" "$K61" \
    "Three oopses into 16 KiB dmesg zones after random base64 lines, lzo: 2 of every 3 bytes fit, so records may be compressed or stored as the uncompressed tail." \
    "$BLK pstore_blk.kmsg_size=16 pstore.compress=lzo" 3 random:300

# Linux 6.12 (Debian's kernel and modules; prepare-6.12.sh): the 6.6+ zlib path
M612="$B/6.12/modules"
ins612() { echo "virtio_blk.ko;pstore_zone.ko;pstore_blk.ko blkdev=/dev/vda best_effort=y kmsg_size=$1;oracle_oops.ko"; }
case_ linux6.12-deflate-3oops "$B/6.12/vmlinuz" "$K612" \
    "Three oopses after 400 filler lines each, default 64 KiB dmesg zones on a 1 MiB partition, 6.6+ deflate (zlib, 32 KiB window)." \
    "pstore.compress=deflate" 3 text:400 --modules "$M612" --insmod "$(ins612 64)"
case_ linux6.12-none-3oops "$B/6.12/vmlinuz" "$K612" \
    "Three oopses after 400 filler lines each, 64 KiB dmesg zones on 1 MiB, pstore.compress=none: uncompressed records cut to the newest lines that fit." \
    "pstore.compress=none" 3 text:400 --modules "$M612" --insmod "$(ins612 64)"
case_ linux6.12-kmsg4-deflate-noise "$B/6.12/vmlinuz" "$K612" \
    "Three oopses into 4 KiB dmesg zones after raw random bytes (900-byte /dev/kmsg records): deflate does not fit, so 6.6+ stores the first bufsize bytes uncompressed, cut mid-line." \
    "pstore.compress=deflate" 3 noise:20 --modules "$M612" --insmod "$(ins612 4)"
case_ linux6.12-kmsg4-deflate-random "$B/6.12/vmlinuz" "$K612" \
    "Three oopses into 4 KiB dmesg zones after short random base64 lines (printk prefixes compress): deflate still fits." \
    "pstore.compress=deflate" 3 random:120 --modules "$M612" --insmod "$(ins612 4)"
case_ linux6.12-lzo-fallback-3oops "$B/6.12/vmlinuz" "$K612" \
    "Three oopses, 64 KiB dmesg zones on 1 MiB, pstore.compress=lzo, which 6.6+ no longer offers: it says so and uses deflate." \
    "pstore.compress=lzo" 3 text:400 --modules "$M612" --insmod "$(ins612 64)"
case_ linux6.12-kmsg8-deflate-5oops "$B/6.12/vmlinuz" "$K612" \
    "Five oopses into 8 KiB dmesg zones on a 1 MiB partition, 6.6+ deflate of at most bufsize*100/60 bytes of text." \
    "pstore.compress=deflate" 5 text:50 --modules "$M612" --insmod "$(ins612 8)"

# Linux 5.10 (bullseye's linux-source-5.10, BROKEN dropped): zstd frames of zstd 1.3.1
K510B="$B/bzImage-5.10"
case_ linux5.10-zstd-3oops "$K510B" "$K510" \
    "Three oopses after 400 filler lines each, default 64 KiB dmesg zones on a 1 MiB partition, zstd frames as 5.8-5.15 wrote them (no content size)." \
    "$BLK pstore_blk.kmsg_size=64 pstore.compress=zstd" 3 text:400
for algo in deflate lzo lz4 lz4hc 842; do
    case_ "linux5.10-$algo-3oops" "$K510B" "$K510" \
        "Three oopses after 400 filler lines each, default 64 KiB dmesg zones on a 1 MiB partition, 5.10's crypto-API $algo." \
        "$BLK pstore_blk.kmsg_size=64 pstore.compress=$algo" 3 text:400
done
# 160 MiB with 4 KiB zones: 5.8-5.10 have no 128 MiB cap. Zone 32766 gets a hand-made
# erased header (time 1 s) so that the kernel writes zones 32767, 32768 and 32769.
case_ linux5.10-160MiB-kmsg4-zstd "$K510B" "$K510" \
    "Three oopses into 4 KiB dmesg zones of a 160 MiB partition: records in zones 32767-32769, past 128 MiB, zstd." \
    "$BLK pstore_blk.kmsg_size=4 pstore.compress=zstd" 3 text:50 \
    --size 160M --sparse --uncapped --seed-erased $((32766 * 4096)) --watch "32767 3" --rm dmesg-pstore_blk-32768 \
    --note "Zone 32766 (offset 134209536) holds an erased dmesg header written by oracle.py, not by a kernel (signature, datalen 0, kmsg magic, time 1 s, Oops count 0): zone.c's recovery then puts the next record in zone 32767. Everything else was written by the kernel." \
    --note "The images are kept gzipped (\`image.bin.gz\`, \`image-after-erase.bin.gz\`, case.json \`sparse_images\`); tests/helpers/cases.py expands them."

# Linux 6.12 built from linux-source-6.12 (pstore-6.12.config): every front end
K612S="Linux 6.12.118 (Debian linux-source-6.12 6.12.118-1~deb12u1), tinyconfig + contrib/oracle/pstore-6.12.config, PSTORE_BLK/PMSG/CONSOLE/FTRACE built in"
case_ linux6.12-all-fronts "$B/bzImage-6.12" "$K612S" \
    "dmesg (2 oopses, deflate), pmsg, console and ftrace zones, 64 KiB each on 2 MiB, one CPU, written by 6.12." \
    "$BLK pstore_blk.kmsg_size=64 pstore_blk.pmsg_size=64 pstore_blk.console_size=64 pstore_blk.ftrace_size=64" \
    2 text:20 --size 2M --fronts --watch "48 464" --system-map "$B/System.map-6.12" \
    --rm "@first,pmsg-pstore_blk-0,ftrace-pstore_blk-0"
