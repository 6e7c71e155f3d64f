#!/usr/bin/env bash
# Networking, side by side with dockerd in one run on this machine:
#   - `docker run --rm busybox true` on the default bridge (median of N);
#   - redis-benchmark between two containers on a user-defined network;
#   - redis-benchmark from the host through a published port, on 127.0.0.1
#     (the userland proxy in both engines) and on the host's own address
#     (kernel DNAT in both).
# Writes bench/results/net.json and prints a table. Needs the test registry
# (scripts/test-env start), redis-tools on the host and a release build of
# berthd and berth-shim. dockerd runs with its default bridge and iptables;
# its leftovers (docker0, iptables tables) are removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-15}
REQS=${REQS:-50000}
REG=${BERTH_TEST_REGISTRY:-127.0.0.1:5000}
BERTHD=${BERTHD:-target/release/berthd}
WORK=$(mktemp -d /tmp/berth-netbench.XXXX)
HOST_IP=$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for(i=1;i<NF;i++) if($i=="src") print $(i+1)}')
mkdir -p bench/results
cleanup() {
  bench_cleanup
  # dockerd's iptables-nft tables and bridge (this host had none before).
  ip link del docker0 2>/dev/null || true
  nft delete table ip filter 2>/dev/null || true
  nft delete table ip nat 2>/dev/null || true
}
. bench/lib.sh
trap cleanup EXIT

# rps OUTPUT: "SET GET" requests per second from redis-benchmark --csv
rps() { awk -F'","' '/^"SET"/{s=$2} /^"GET"/{g=$2} END{gsub(/"/,"",s); gsub(/"/,"",g); printf "%d %d", s, g}'; }

# wait_redis PORT [HOST]
wait_redis() { for _ in $(seq 1 200); do [[ $(redis-cli -h "${2:-127.0.0.1}" -p "$1" ping 2>/dev/null) == PONG ]] && return 0; sleep 0.05; done; return 1; }

BENCH_ARGS=(-q --csv -t set,get -n "$REQS" -c 20 -d 1024)
declare -A RUN NET LO HIP
for e in berthd dockerd; do
  dir=$WORK/$e; sock=$dir/s.sock; mkdir -p "$dir"
  case $e in
    berthd) "$BERTHD" --data-root "$dir/data" --exec-root "$dir/exec" -H "unix://$sock" \
              --registry-mirror "http://$REG" --insecure-registry "$REG" --log-level warn >"$dir/log" 2>&1 & ;;
    dockerd) dockerd --data-root "$dir/data" --exec-root "$dir/exec" -H "unix://$sock" --pidfile "$dir/pid" \
              --registry-mirror "http://$REG" --insecure-registry "$REG" --log-level warn >"$dir/log" 2>&1 & ;;
  esac
  pid=$!
  wait_sock "$sock"
  d() { docker -H "unix://$sock" "$@"; }
  d pull -q busybox >/dev/null; d pull -q redis >/dev/null
  RUN[$e]=$(median_ms d run --rm busybox true)
  d network create benchnet >/dev/null
  d run -d --name srv --network benchnet redis >/dev/null
  NET[$e]=$(d run --rm --network benchnet redis sh -c 'for i in $(seq 100); do redis-cli -h srv ping >/dev/null 2>&1 && break; sleep 0.05; done; redis-benchmark -h srv "$@"' sh "${BENCH_ARGS[@]}" | rps)
  port=$((20000 + RANDOM % 20000))
  d run -d --name pub -p "$port:6379" redis >/dev/null
  wait_redis "$port"
  LO[$e]=$(redis-benchmark -h 127.0.0.1 -p "$port" "${BENCH_ARGS[@]}" | rps)
  HIP[$e]=$(redis-benchmark -h "$HOST_IP" -p "$port" "${BENCH_ARGS[@]}" | rps)
  echo "$e: run ${RUN[$e]} ms; user net SET/GET ${NET[$e]}; 127.0.0.1 ${LO[$e]}; $HOST_IP ${HIP[$e]}" >&2
  d rm -f srv pub >/dev/null
  d network rm benchnet >/dev/null
  kill "$pid"; wait "$pid" 2>/dev/null || true
done

set -- ${NET[berthd]} ${NET[dockerd]} ${LO[berthd]} ${LO[dockerd]} ${HIP[berthd]} ${HIP[dockerd]}
cat > bench/results/net.json <<JSON
{"runs":$N,"requests":$REQS,"berthd_bridge_run_ms":${RUN[berthd]},"dockerd_bridge_run_ms":${RUN[dockerd]},
 "usernet_set_get_rps":{"berthd":[$1,$2],"dockerd":[$3,$4]},
 "published_loopback_set_get_rps":{"berthd":[$5,$6],"dockerd":[$7,$8]},
 "published_hostip_set_get_rps":{"berthd":[$9,${10}],"dockerd":[${11},${12}]}}
JSON
printf '| measure | berthd | dockerd 20.10 | ratio |\n|---|---|---|---|\n'
printf '| docker run --rm busybox true, default bridge (median of %s) | %s ms | %s ms | %.2f |\n' "$N" "${RUN[berthd]}" "${RUN[dockerd]}" "$(echo "${RUN[berthd]} / ${RUN[dockerd]}" | bc -l)"
row() { printf '| %s SET / GET req/s | %s / %s | %s / %s | %.2f / %.2f |\n' "$1" "$2" "$3" "$4" "$5" "$(echo "$2 / $4" | bc -l)" "$(echo "$3 / $5" | bc -l)"; }
row "container to container, user network" $1 $2 $3 $4
row "host to published port on 127.0.0.1" $5 $6 $7 $8
row "host to published port on $HOST_IP" $9 ${10} ${11} ${12}
