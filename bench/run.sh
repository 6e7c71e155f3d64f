#!/usr/bin/env bash
# `docker run --rm busybox true` through the docker CLI with berthd, dockerd
# and podman (when installed), in one run on the same machine, plus 100
# containers started at once. Writes bench/results/run.json and prints a
# table. Needs the test registry (scripts/test-env start) and a release
# build of berthd and berth-shim.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20}
CONCURRENT=${CONCURRENT:-100}
REG=${BERTH_TEST_REGISTRY:-127.0.0.1:5000}
BERTHD=${BERTHD:-target/release/berthd}
WORK=$(mktemp -d /tmp/berth-bench.XXXX)
mkdir -p bench/results
. bench/lib.sh
trap bench_cleanup EXIT

# concurrent CMD... : starts CONCURRENT copies at once; prints "ok total_ms"
concurrent() {
  local s e ok=0 pids=() p
  s=$(date +%s%N)
  for i in $(seq 1 "$CONCURRENT"); do "$@" >/dev/null 2>&1 & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" && ok=$((ok + 1)); done
  e=$(date +%s%N)
  echo "$ok $(( (e - s) / 1000000 ))"
}

# start_engine name dir: sets $sock and $engine_pid
start_engine() {
  local name=$1 dir=$2
  sock=$2/s.sock
  mkdir -p "$dir"
  case $name in
    berthd) "$BERTHD" --data-root "$dir/data" --exec-root "$dir/exec" -H "unix://$sock" \
              --registry-mirror "http://$REG" --insecure-registry "$REG" --log-level warn >"$dir/log" 2>&1 & ;;
    dockerd) dockerd --data-root "$dir/data" --exec-root "$dir/exec" -H "unix://$sock" --pidfile "$dir/pid" \
              --registry-mirror "http://$REG" --insecure-registry "$REG" --bridge none --iptables=false \
              --ip-masq=false --log-level warn >"$dir/log" 2>&1 & ;;
  esac
  engine_pid=$!
  wait_sock "$sock"
  docker -H "unix://$sock" pull -q busybox >/dev/null
}

declare -A T C
for e in dockerd berthd; do
  start_engine $e "$WORK/$e"
  T[$e]=$(median_ms docker -H "unix://$sock" run --rm --network none busybox true)
  C[$e]=$(concurrent docker -H "unix://$sock" run --rm --network none busybox true)
  echo "$e: run ${T[$e]} ms; $CONCURRENT concurrent: ${C[$e]}" >&2
  kill "$engine_pid" 2>/dev/null || true; wait "$engine_pid" 2>/dev/null || true
done
if command -v podman >/dev/null; then
  podman --root "$WORK/podman/root" --runroot "$WORK/podman/run" pull -q "docker://$REG/library/busybox" --tls-verify=false >/dev/null
  # crun refuses this hybrid-cgroup host and podman's default rlimits exceed
  # the host's hard limits: runc and explicit limits make it run here.
  T[podman]=$(median_ms podman --root "$WORK/podman/root" --runroot "$WORK/podman/run" --runtime runc run --rm --network none \
      --ulimit nofile=1024:1024 --ulimit nproc=1024:1024 "$REG/library/busybox" true)
  echo "podman: run ${T[podman]} ms" >&2
fi
read -r bok bms <<<"${C[berthd]}"; read -r dok dms <<<"${C[dockerd]}"
cat > bench/results/run.json <<JSON
{"runs":$N,"berthd_run_ms":${T[berthd]},"dockerd_run_ms":${T[dockerd]},"podman_run_ms":${T[podman]:-null},
 "concurrent":$CONCURRENT,"berthd_concurrent_ok":$bok,"berthd_concurrent_ms":$bms,"dockerd_concurrent_ok":$dok,"dockerd_concurrent_ms":$dms}
JSON
printf '| engine | docker run --rm --network none busybox true (median of %s) | %s at once: ok, wall time |\n|---|---|---|\n' "$N" "$CONCURRENT"
printf '| dockerd 20.10 | %s ms | %s |\n' "${T[dockerd]}" "${C[dockerd]}"
printf '| berthd | %s ms | %s |\n' "${T[berthd]}" "${C[berthd]}"
[[ -n ${T[podman]:-} ]] && printf '| podman | %s ms | |\n' "${T[podman]}"
printf 'ratio berthd/dockerd: %.2f\n' "$(echo "${T[berthd]} / ${T[dockerd]}" | bc -l)"
