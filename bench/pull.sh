#!/usr/bin/env bash
# Cold pull of the redis fixture and idle memory after it, berthd beside
# dockerd, in one run on the same machine and registry. Writes
# bench/results/pull.json and prints a table. Needs: scripts/test-env start
# (registry on 127.0.0.1:5000) and a release build of berthd.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
IMAGE=${IMAGE:-redis}
REG=${BERTH_TEST_REGISTRY:-127.0.0.1:5000}
BERTHD=${BERTHD:-target/release/berthd}
WORK=$(mktemp -d /tmp/berth-bench.XXXX)
mkdir -p bench/results
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; umount -R "$WORK"/* 2>/dev/null || true; rm -rf "$WORK"' EXIT

now() { date +%s.%N; }
wait_sock() { for _ in $(seq 1 300); do docker -H "unix://$1" version >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "engine on $1 did not start" >&2; return 1; }
rss_kb() { # sum of VmRSS of a pid and its descendants
  local total=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$((total + $(awk '/VmRSS/{print $2}' /proc/$p/status 2>/dev/null || echo 0)))
  done
  echo $total
}

run_engine() { # name -> prints "seconds rss_kb"
  local name=$1 dir="$WORK/$1-$2" sock pid start end
  mkdir -p "$dir"; sock="$dir/s.sock"
  case $name in
    berthd) "$BERTHD" --data-root "$dir/data" --exec-root "$dir/exec" -H "unix://$sock" \
              --registry-mirror "http://$REG" --insecure-registry "$REG" --log-level warn 2>"$dir/log" & pid=$! ;;
    dockerd) dockerd --data-root "$dir/data" --exec-root "$dir/exec" -H "unix://$sock" --pidfile "$dir/pid" \
              --registry-mirror "http://$REG" --insecure-registry "$REG" --bridge none --iptables=false \
              --ip-masq=false --log-level warn 2>"$dir/log" & pid=$! ;;
  esac
  wait_sock "$sock"
  start=$(now)
  docker -H "unix://$sock" pull -q "$IMAGE" >/dev/null
  end=$(now)
  sleep 5   # let the engine settle to idle before reading its memory
  local rss; rss=$(rss_kb $pid)
  kill $pid; wait $pid 2>/dev/null || true
  umount -R "$dir/data" 2>/dev/null || true
  echo "$(echo "$end - $start" | bc -l) $rss"
}

declare -A T R
for i in $(seq 1 "$RUNS"); do
  for e in dockerd berthd; do
    read -r t r < <(run_engine $e $i)
    T[$e]+="$t "; R[$e]+="$r "
    echo "run $i $e: ${t}s, idle RSS ${r} KiB" >&2
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
bt=$(echo "${T[berthd]}" | median); dt=$(echo "${T[dockerd]}" | median)
br=$(echo "${R[berthd]}" | median); dr=$(echo "${R[dockerd]}" | median)
num() { printf '%.4f' "$1"; }
cat > bench/results/pull.json <<JSON
{"image":"$IMAGE","runs":$RUNS,"berthd_pull_s":$(num "$bt"),"dockerd_pull_s":$(num "$dt"),"berthd_idle_rss_kib":$br,"dockerd_idle_rss_kib":$dr,
 "pull_time_ratio":$(num "$(echo "$bt / $dt" | bc -l)"),"idle_rss_ratio":$(num "$(echo "$br / $dr" | bc -l)")}
JSON
printf '| engine | cold pull of %s (median of %s) | idle RSS after pull |\n|---|---|---|\n' "$IMAGE" "$RUNS"
printf '| dockerd 20.10 + containerd | %.2f s | %.1f MiB |\n' "$dt" "$(echo "$dr/1024" | bc -l)"
printf '| berthd | %.2f s | %.1f MiB |\n' "$bt" "$(echo "$br/1024" | bc -l)"
printf 'ratio berthd/dockerd: time %.2f, memory %.3f\n' "$(echo "$bt/$dt" | bc -l)" "$(echo "$br/$dr" | bc -l)"
