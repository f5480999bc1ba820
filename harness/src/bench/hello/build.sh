# shellcheck shell=sh
# Runs in the guest (sh -c): builds the module in a transient unit with
# memory accounting, sampling MemAvailable meanwhile; loads and unloads it.
# $1: the share directory bench-build filled. Sections start with @@.
set -u
src=/var/tmp/avf-bench-hello
rm -rf "$src" && mkdir -p "$src" && cp "$1"/hello/avf_bench_hello.c "$1"/hello/Kbuild "$src"/
build=/usr/lib/modules/$(uname -r)/build
meminfo() { awk -v k="$1:" '$1 == k { print $2 }' /proc/meminfo; }
echo @@memtotal_start_kib; meminfo MemTotal
samples=/var/tmp/avf-bench-memavail
(while :; do meminfo MemAvailable; sleep 0.5; done) >"$samples" &
sampler=$!
t0=$(date +%s.%N)
# memory.peak is read by the unit's last process, while its cgroup exists.
# shellcheck disable=SC2016 # expanded by the unit's shell
systemd-run --wait --pipe --quiet -p MemoryAccounting=yes --unit=avf-bench-build \
  /bin/sh -c 'make -C "$0" M="$1" -j"$(nproc)" modules >&2 && echo @@peak_bytes &&
    cat "/sys/fs/cgroup$(cut -d: -f3- /proc/self/cgroup)/memory.peak"' "$build" "$src"
rc=$?
t1=$(date +%s.%N)
kill "$sampler"
wait "$sampler" 2>/dev/null
echo @@rc; echo "$rc"
echo @@build_s; echo "$t0 $t1" | awk '{ printf "%.3f\n", $2 - $1 }'
echo @@memavail_min_kib; sort -n "$samples" | head -n1
echo @@memtotal_end_kib; meminfo MemTotal
[ "$rc" = 0 ] || exit 0
echo @@vermagic; modinfo -F vermagic "$src"/avf_bench_hello.ko
insmod "$src"/avf_bench_hello.ko || exit 0
rmmod avf_bench_hello
echo @@dmesg; dmesg | grep 'avf_bench_hello:'
