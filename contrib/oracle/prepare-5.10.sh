#!/bin/sh
# bullseye's linux-source-5.10, fetched with a private apt state (the machine's own
# sources stay bookworm's) and unpacked for build-kernel.sh, which drops PSTORE_BLK's
# "depends on BROKEN".   prepare-5.10.sh  -> $ORACLE_BUILD/5.10/linux-source-5.10
set -eu
B=${ORACLE_BUILD:-/work/oracle-build}/5.10
mkdir -p "$B/parts" "$B/lists/partial" "$B/cache" && cd "$B"
cat > parts/bullseye.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bullseye-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
A="-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts=$B/parts -o Dir::State::Lists=$B/lists -o Dir::Cache=$B/cache"
apt-get $A update
[ -f linux-source-5.10_*_all.deb ] || apt-get $A download linux-source-5.10
rm -rf x linux-source-5.10
dpkg-deb -x linux-source-5.10_*_all.deb x
tar xf x/usr/src/linux-source-5.10.tar.xz
