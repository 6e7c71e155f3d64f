#!/usr/bin/env bash
# The Berth VM: cold start to the engine answering (first boot, which formats
# the data disk, and a second boot), graceful stop time, idle RSS of QEMU (and
# after a container used and freed 512 MiB) and
# of the host-side supervisor, and bind-mount throughput (dd of $MIB MiB in a
# container on a /tmp bind mount vs the same dd on the host). Writes
# bench/results/vm.json and prints a table.
#
# Needs: root, target/vm-image (vm-image/build.sh), QEMU, the docker CLI,
# the fixture registry (eval "$(scripts/test-env start)"), and a build of
# berth (BERTH=target/release/berth by default, falling back to debug).
# ACCEL=tcg by default (the only accelerator that works on these machines).
set -euo pipefail
cd "$(dirname "$0")/.."
ACCEL=${ACCEL:-tcg}
CPUS=${CPUS:-2}
MEMORY=${MEMORY:-1024}
MIB=${MIB:-256}
REG=${BERTH_TEST_REGISTRY:-127.0.0.1:5000}
GUEST_REG="host.docker.internal:${REG##*:}"
BERTH=${BERTH:-target/release/berth}
[[ -x $BERTH ]] || BERTH=target/debug/berth
DOCKER=${DOCKER:-$(command -v /usr/local/bin/docker || command -v docker)}
WORK=$(mktemp -d /tmp/bvm.XXXX)
export BERTH_HOME="$WORK/h" DOCKER_CONFIG="$WORK/dc" BERTH_VM_IMAGE=${BERTH_VM_IMAGE:-$PWD/target/vm-image}
export DOCKER_HOST="unix://$BERTH_HOME/run/docker.sock"
mkdir -p "$BERTH_HOME" "$DOCKER_CONFIG" bench/results
printf '{"insecure-registries": ["%s"]}\n' "$GUEST_REG" > "$BERTH_HOME/daemon.json"
trap '"$BERTH" vm stop >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
since_ms() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
rss_mib() { awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }
state() { python3 -c "import json,sys; print(json.load(open('$BERTH_HOME/vm/state.json'))['$1'])"; }
start_vm() { "$BERTH" vm start --accel "$ACCEL" --cpus "$CPUS" --memory "$MEMORY" >/dev/null; }

t=$(now); start_vm; first_boot=$(since "$t")
t=$(now); "$BERTH" vm stop >/dev/null; first_stop=$(since "$t")
t=$(now); start_vm; cold_start=$(since "$t")

img="$GUEST_REG/library/busybox:latest"
"$DOCKER" pull -q "$img" >/dev/null
sleep 10 # let the guest settle before measuring idle memory
qemu_rss=$(rss_mib "$(state qemu_pid)")
sup_rss=$(rss_mib "$(state supervisor_pid)")
# Memory a container used and freed goes back to the host (virtio-balloon
# free page reporting): qemu RSS 10 s after a container touched 512 MiB and
# exited (without reporting it stays about 512 MiB above idle).
"$DOCKER" run --rm "$img" dd if=/dev/zero of=/dev/null bs=512M count=1 2>/dev/null
sleep 10
qemu_rss_freed=$(rss_mib "$(state qemu_pid)")

# Bind-mount throughput: write (fsync'd) then read, inside a running
# container (so container start-up is not timed) and on the host.
share="$WORK/share"; mkdir -p "$share"
"$DOCKER" run -d --name bench -v "$share:/w" "$img" sleep 3600 >/dev/null
t=$(now); "$DOCKER" exec bench dd if=/dev/zero of=/w/f bs=1M count="$MIB" conv=fsync 2>/dev/null; vm_write=$(since_ms "$t")
sync; echo 3 > /proc/sys/vm/drop_caches
# ...and the guest's page cache, through the guest root shell.
printf 'sync; echo 3 > /proc/sys/vm/drop_caches\n' | "$BERTH" vm shell >/dev/null
t=$(now); "$DOCKER" exec bench dd if=/w/f of=/dev/null bs=1M 2>/dev/null; vm_read=$(since_ms "$t")
"$DOCKER" rm -f bench >/dev/null
rm -f "$share/f"
t=$(now); dd if=/dev/zero of="$share/f" bs=1M count="$MIB" conv=fsync 2>/dev/null; host_write=$(since_ms "$t")
sync; echo 3 > /proc/sys/vm/drop_caches
t=$(now); dd if="$share/f" of=/dev/null bs=1M 2>/dev/null; host_read=$(since_ms "$t")

t=$(now); stop_out=$("$BERTH" vm stop); stop=$(since "$t")

mbs() { awk -v m="$MIB" -v s="$1" 'BEGIN { if (s > 0) printf "%.0f", m / s; else print "-" }'; }
cat > bench/results/vm.json <<EOF
{"accel": "$ACCEL", "cpus": $CPUS, "memory_mib": $MEMORY,
 "first_boot_s": $first_boot, "cold_start_s": $cold_start, "stop_s": $stop, "first_stop_s": $first_stop,
 "qemu_rss_mib": $qemu_rss, "supervisor_rss_mib": $sup_rss,
 "qemu_rss_after_512mib_container_mib": $qemu_rss_freed,
 "bind_write_mib_s": $(mbs "$vm_write"), "bind_read_mib_s": $(mbs "$vm_read"),
 "host_write_mib_s": $(mbs "$host_write"), "host_read_mib_s": $(mbs "$host_read")}
EOF
echo "VM benchmark (accel $ACCEL, $CPUS cpus, $MEMORY MiB; $(nproc) host cores)"
echo "| measure | value |"
echo "| --- | --- |"
echo "| first boot to engine answering (formats data disk) | ${first_boot} s |"
echo "| cold start to engine answering | ${cold_start} s |"
echo "| graceful stop (\`berth vm stop\`) | ${stop} s |"
echo "| idle RSS, qemu | ${qemu_rss} MiB |"
echo "| idle RSS, host supervisor/forwarder | ${sup_rss} MiB |"
echo "| qemu RSS 10 s after a container touched 512 MiB and exited | ${qemu_rss_freed} MiB |"
echo "| bind mount write, ${MIB} MiB dd conv=fsync (VM / host) | $(mbs "$vm_write") / $(mbs "$host_write") MiB/s |"
echo "| bind mount read, ${MIB} MiB dd (VM / host, host and guest caches dropped) | $(mbs "$vm_read") / $(mbs "$host_read") MiB/s |"
echo "stop: $stop_out"
