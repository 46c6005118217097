#!/bin/sh
# One entry point for a fresh Debian 12 machine: installs what is missing, then runs a make target.
#   ./dev.sh demo    the main job: doctor, then a real trace of the bundled demo app
#   ./dev.sh test    the whole test suite, real BPF tests included
#   ./dev.sh setup   only the set-up (apt packages, venv, editable install, native build)
# Running it again is quick: apt runs only when a package is missing, pip only when the build inputs changed.
set -eu
cd "$(dirname "$0")"

if [ "$(id -u)" != 0 ]; then
    echo "dev.sh: run as root (it installs apt packages and attaches uprobes)" >&2
    exit 1
fi

arch=$(dpkg --print-architecture)
# Needed by everything: bcc, kernel headers (Debian's meta package), sys/sdt.h, compilers, venv.
base="bpfcc-tools python3-bpfcc libbpfcc linux-headers-$arch systemtap-sdt-dev bpftrace gcc make
      python3-venv python3-pip python3-dev binutils procps util-linux xz-utils"
# Reference binaries and tools the test suite compares against.
tests="nodejs tmux postgresql-15 openjdk-17-jre-headless gcc-aarch64-linux-gnu libc6-dev-arm64-cross bpftool libc6-dbg python3.11-dbg
       prometheus g++"

wanted=$base
case "${1:-}" in test|check) wanted="$base $tests" ;; esac

missing=""
for pkg in $wanted; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "dev.sh: installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

exec make --no-print-directory "$@"
