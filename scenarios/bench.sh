#!/usr/bin/env bash
# scenarios/bench.sh [-n RUNS] [FILTERSET]
# Runs the VM scenarios RUNS times (default 3) with nextest and prints, per
# scenario, how many runs passed and the median / min / max wall time, plus
# the median boot-to-marker time. Golden stability: `-n 20 'test(golden)'`.
# Needs built payloads (image-build/build-all.sh); prints figures, asserts
# nothing about time.
set -euo pipefail

runs=3
if [[ ${1:-} == -n ]]; then
  runs=$2
  shift 2
fi
filter=${1:-'test(/^vm::/)'}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# Logs and JUnit of every run stay here (failures need reading).
out=$repo/target/bench/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
echo "[bench] logs in $out" >&2

cargo build -q -p avf-scenarios --tests
for i in $(seq "$runs"); do
  echo "[bench] run $i/$runs" >&2
  # Keep going on failures: a failed run is counted, not fatal.
  cargo nextest run -p avf-scenarios --profile ci --no-fail-fast \
    -E "$filter" >"$out/run-$i.log" 2>&1 || true
  cp target/nextest/ci/junit.xml "$out/junit-$i.xml" 2>/dev/null || true
  # A failed scenario's artefacts are overwritten by the next run: keep them.
  if grep -q '^ *FAIL ' "$out/run-$i.log"; then
    cp -r target/avf-artefacts "$out/artefacts-$i"
  fi
done

python3 - "$out" "$runs" <<'PY'
import glob, re, statistics, sys, xml.etree.ElementTree as ET
out, runs = sys.argv[1], int(sys.argv[2])
times, passed, boots = {}, {}, []
for f in sorted(glob.glob(f"{out}/junit-*.xml")):
    for tc in ET.parse(f).getroot().iter("testcase"):
        name = tc.get("name")
        ok = tc.find("failure") is None and tc.find("error") is None
        times.setdefault(name, []).append(float(tc.get("time", "0")))
        passed[name] = passed.get(name, 0) + ok
        for so in tc.iter("system-out"):
            boots += [float(m) for m in re.findall(r"boot marker ([0-9.]+)s", so.text or "") if float(m) > 0]
print(f"{'scenario':40} {'passed':>8} {'median':>8} {'min':>8} {'max':>8}")
for name in sorted(times):
    t = times[name]
    print(f"{name:40} {passed[name]:>4}/{len(t):<3} {statistics.median(t):8.1f} {min(t):8.1f} {max(t):8.1f}")
if boots:
    print(f"boot to AVF-BOOT-OK (guest start to marker): median {statistics.median(boots):.1f} s over {len(boots)} boots")
PY
