#!/bin/sh
# Set up pstorefs on Debian 12 (run as root), then run one job:
#
#   contrib/setup.sh demo     mount a bundled kernel-written image and show its records
#   contrib/setup.sh test     run the whole test suite (what CI runs)
#   contrib/setup.sh          set up only
#
# Set-up: the system packages (fuse3, libfuse3-dev, pkg-config, a compiler, Python's
# venv and headers, liblzo2-dev to build python-lzo, systemd for systemd-pstore, attr
# for getfattr, squashfuse and squashfs-tools for bench/run's peers, man-db to check the
# man pages, e2fsprogs for a foreign filesystem to refuse), bookworm-backports' systemd
# 254 extracted into .cache for the tests, a virtual environment in .venv with pstorefs
# and its test tools, and
# links of the commands into /usr/local/sbin, where mount(8) and mount.fuse3 (which run
# with a fixed system PATH) find them.
set -eu
cd "$(dirname "$0")/.."
top=$(pwd)

packages="fuse3 libfuse3-dev liblzo2-dev pkg-config gcc python3-venv python3-dev util-linux mount systemd attr squashfuse squashfs-tools man-db e2fsprogs"
missing=""
for p in $packages; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "setup: installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi
# systemd-pstore 254 for the tests (tests/helpers/systemd.py), beside Debian 12's 252:
# bookworm-backports' packages, extracted into .cache, not installed over the system's.
backports=/etc/apt/sources.list.d/bookworm-backports.sources
if ! grep -qs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/*; then
    printf '%s\n' "Types: deb" "URIs: http://deb.debian.org/debian" "Suites: bookworm-backports" \
        "Components: main" "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" > "$backports"
    apt-get update -qq
fi
if [ ! -e .cache/systemd-254/lib/systemd/systemd-pstore ]; then
    rm -rf .cache/systemd-254 .cache/debs && mkdir -p .cache/debs
    (cd .cache/debs && apt-get download -qq -o APT::Sandbox::User=root \
        systemd/bookworm-backports libsystemd-shared/bookworm-backports)
    for deb in .cache/debs/*.deb; do dpkg-deb -x "$deb" .cache/systemd-254; done
    rm -rf .cache/debs
fi
[ -x .venv/bin/python ] || /usr/bin/python3 -m venv .venv
# [test]: pytest, hypothesis, ruff, both zstd decoders and atheris (tests/fuzz)
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]"
for cmd in pstorefs pstorectl; do
    ln -sf "$top/.venv/bin/$cmd" "/usr/local/sbin/$cmd"
done

case "${1:-}" in
demo)
    case_dir=tests/data/fixtures/x86_64-all-fronts
    work=$(mktemp -d /tmp/pstorefs-demo.XXXXXX)
    cleanup() { fusermount3 -u "$work/mnt" 2>/dev/null || true; rm -rf "$work"; }
    trap cleanup EXIT
    trap 'cleanup; exit 1' HUP INT TERM PIPE
    cp "$case_dir/image.bin" "$work/image.bin"
    mkdir "$work/mnt"
    show() { echo "\$ $*"; "$@"; }
    show mount -t fuse.pstorefs -o "name=pstore_blk,kmsg_size=64,pmsg_size=64,console_size=64,ftrace_size=64,system_map=$top/$case_dir/System.map.gz" "$work/image.bin" "$work/mnt"
    show ls -l "$work/mnt"
    show head -n 4 "$work/mnt/dmesg-pstore_blk-0"
    show head -n 3 "$work/mnt/ftrace-pstore_blk-0"
    show rm "$work/mnt/pmsg-pstore_blk-0"
    show ls "$work/mnt"
    show umount "$work/mnt"
    echo "demo: the same records as the kernel's /sys/fs/pstore ($case_dir/files); pmsg erased on the image copy"
    ;;
test)
    shift
    exec .venv/bin/python -m pytest "$@"
    ;;
"") ;;
*)
    echo "usage: contrib/setup.sh [demo|test [PYTEST-ARGS...]]" >&2
    exit 2
    ;;
esac
