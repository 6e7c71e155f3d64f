# Shared by the engine benchmarks (sourced, not run).

# WORK: the benchmark's scratch directory. bench_cleanup stops background
# engines, unmounts what they left under WORK and removes it.
bench_cleanup() {
  for p in $(jobs -p); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  grep " $WORK" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$WORK"
}

# wait_sock SOCKET: until an engine answers there (15 s at most).
wait_sock() { for _ in $(seq 1 300); do docker -H "unix://$1" version >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "engine on $1 did not start" >&2; return 1; }

# median_ms CMD...: median wall time of N runs of CMD, in ms.
median_ms() {
  local i s e ts=()
  for i in $(seq 1 "$N"); do
    s=$(date +%s%N); "$@" >/dev/null || { echo "failed: $*" >&2; exit 1; }; e=$(date +%s%N)
    ts+=($(( (e - s) / 1000000 )))
  done
  printf '%s\n' "${ts[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'
}
