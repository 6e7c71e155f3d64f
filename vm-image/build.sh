#!/usr/bin/env bash
# Builds the Berth guest image from Debian packages and the workspace's own
# binaries (see README.md beside this script):
#
#   target/vm-image/vmlinuz       Debian's linux-image-amd64 kernel
#   target/vm-image/initrd.img    static berth-init as /init + the modules that
#                                 mount the root (virtio_blk, ext4)
#   target/vm-image/rootfs.img    read-only ext4 root: berth-init, berthd,
#                                 berth-shim, crun, nftables, e2fsprogs, ...
#   target/vm-image/manifest.json input hashes, sizes, kernel version
#
# Rebuilds only when an input changes (this script, the files beside it, the
# package list, the kernel package, the binaries). The mmdebstrap root and the
# kernel .deb are cached under ${BERTH_CACHE:-/var/cache/berth}/vm-image,
# keyed by the package list, so a change of binaries only repacks the images.
#
# Usage: vm-image/build.sh [--force]
# Needs root (mmdebstrap, chroot), mmdebstrap, cpio, gzip, e2fsprogs, cargo.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
out="$root/target/vm-image"
cache="${BERTH_CACHE:-/var/cache/berth}/vm-image"
force=0
[[ "${1:-}" == "--force" ]] && force=1

log() { printf 'vm-image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

[[ $EUID -eq 0 ]] || die "needs root (mmdebstrap, chroot, device nodes)"
for tool in mmdebstrap cpio gzip mkfs.ext4 apt-get apt-cache dpkg-deb sha256sum flock cargo python3; do
    command -v "$tool" >/dev/null || die "missing $tool: run scripts/install-deps"
done

mkdir -p "$cache" "$out"
exec 9>"$cache/.lock"
flock 9
start=$SECONDS

# --- inputs ---------------------------------------------------------------

suite=bookworm
# The mirror configured for apt on this machine (deb822 or one-line format).
# The first stanza (deb822) or line whose suites include $suite, not security.
mirror="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk -v suite="$suite" 'BEGIN { RS = "" }
    { uri = ""; ok = 0; n = split($0, l, "\n")
      for (i = 1; i <= n; i++) {
          if (l[i] ~ /^URIs:/) { split(l[i], a, /[ \t]+/); uri = a[2] }
          if (l[i] ~ /^Suites:/ && l[i] ~ ("[ \t]" suite "([ \t]|$)")) ok = 1
      }
      if (ok && uri != "" && uri !~ /security/) { print uri; exit } }' || true)"
if [[ -z "$mirror" ]]; then
    mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk -v suite="$suite" '
        $1 == "deb" && $0 !~ /security/ { for (i = 2; i < NF; i++) if ($i ~ /^https?:/ && $(i + 1) == suite) { print $i; exit } }' || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

# What the guest root holds besides Essential: the OCI runtime, the engine's
# tools (nft, ps, ip, unshare/nsenter from util-linux, mount), mkfs/fsck for
# the data disk, a shell (busybox, its applets linked where Debian has no
# command of that name), modprobe for the kernel's module autoloading (nf_tables
# expressions), CA roots for registries, tini for `--init`.
packages=(crun nftables e2fsprogs busybox ca-certificates tini iproute2 procps kmod mount)
pkg_list="$(IFS=,; echo "${packages[*]}")"
epoch=1704067200

# Kernel: Debian's linux-image-amd64 meta package names the real one.
kpkg="$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')"
[[ -n "$kpkg" ]] || die "cannot resolve linux-image-amd64 (apt-get update?)"
kdeb_version="$(apt-cache policy "$kpkg" | awk '/Candidate:/ { print $2 }')"

# The modules the engine and the guest need; their dependencies are added from
# modules.dep. Everything under these directories is shipped, so the kernel
# can autoload nf_tables expressions and friends with modprobe.
module_dirs=(
    kernel/net/netfilter kernel/net/ipv4/netfilter kernel/net/ipv6/netfilter
    kernel/net/bridge kernel/net/9p kernel/net/vmw_vsock kernel/net/sched
    kernel/fs/overlayfs kernel/fs/9p kernel/fs/fuse kernel/fs/ext4 kernel/fs/jbd2
    kernel/drivers/virtio kernel/drivers/block/virtio_blk.ko # (virtio_balloon: free page reporting)
    kernel/drivers/net/veth.ko kernel/drivers/net/virtio_net.ko kernel/drivers/net/tun.ko
    kernel/drivers/net/dummy.ko kernel/drivers/net/vxlan kernel/drivers/net/macvlan.ko
    kernel/drivers/net/ipvlan
    kernel/drivers/char/virtio_console.ko kernel/drivers/char/hw_random/virtio-rng.ko
    kernel/drivers/input/evdev.ko kernel/drivers/acpi/button.ko
    kernel/crypto/crc32c_generic.ko kernel/arch/x86/crypto/crc32c-intel.ko
)
# Mounting the root: the initrd carries only these (and their dependencies).
initrd_modules=(virtio_pci virtio_blk ext4 crc32c_generic crc32c-intel)

# --- binaries --------------------------------------------------------------

log "building berthd, berth-shim (release)"
(cd "$root" && cargo build --release --quiet -p berthd -p berth-shim)
# berth-init runs as /init before any libc exists in the initrd: static. A
# separate target dir keeps the RUSTFLAGS change from rebuilding everything
# else; --target keeps build scripts and proc macros dynamic.
host_triple="$(rustc -vV | awk '/^host:/ { print $2 }')"
log "building berth-init (static, $host_triple)"
(cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --quiet -p berth-init --target "$host_triple" --target-dir "$root/target/init-static")
bin_berthd="$root/target/release/berthd"
bin_shim="$root/target/release/berth-shim"
bin_init="$root/target/init-static/$host_triple/release/berth-init"
for b in "$bin_berthd" "$bin_shim" "$bin_init"; do [[ -x "$b" ]] || die "missing $b"; done
case "$(LC_ALL=C ldd "$bin_init" 2>&1 || true)" in
    *"not a dynamic"* | *"statically linked"*) ;;
    *) die "$bin_init is not static" ;;
esac

# --- up to date? -------------------------------------------------------------

# merged-usr hook: merged /usr with symlinks, without the usrmerge package
# (which would pull in all of perl, ~50 MB).
mm_args=(--variant=essential --include="$pkg_list" --aptopt='Acquire::Retries "3"'
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/*/copyright'
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*'
    --dpkgopt='path-exclude=/usr/share/lintian/*' --dpkgopt='path-exclude=/usr/share/zsh/*'
    --dpkgopt='path-exclude=/usr/share/bash-completion/*'
    "$suite")
mm_key="$(printf '%s\n' "${mm_args[@]}" "$mirror" | sha256sum | cut -c1-16)"

sha() { sha256sum "$1" | cut -d' ' -f1; }
script_hash="$(find "$here" -type f ! -name '*.md' -print0 | LC_ALL=C sort -z | xargs -0 cat | sha256sum | cut -d' ' -f1)"
inputs_hash="$(printf '%s\n' "$script_hash" "$mm_key" "$kpkg=$kdeb_version" \
    "$(sha "$bin_berthd")" "$(sha "$bin_shim")" "$(sha "$bin_init")" | sha256sum | cut -d' ' -f1)"

if [[ $force == 0 && -f "$out/manifest.json" && -s "$out/vmlinuz" && -s "$out/initrd.img" && -s "$out/rootfs.img" ]] &&
    grep -q "\"inputs_sha256\": \"$inputs_hash\"" "$out/manifest.json"; then
    log "up to date: $out ($((SECONDS - start))s)"
    exit 0
fi

# --- cached downloads ----------------------------------------------------------

rootfs_tar="$cache/rootfs-$suite-$mm_key.tar"
if [[ ! -s "$rootfs_tar" ]]; then
    log "mmdebstrap $suite ($pkg_list) from $mirror (a minute or two)"
    for try in 1 2 3; do
        if SOURCE_DATE_EPOCH=$epoch mmdebstrap --quiet --format=tar "${mm_args[@]}" "$rootfs_tar.tmp" "$mirror" \
            >"$cache/mmdebstrap.log" 2>&1; then
            mv "$rootfs_tar.tmp" "$rootfs_tar"
            break
        fi
        log "mmdebstrap failed (try $try), see $cache/mmdebstrap.log"
        tail -n 20 "$cache/mmdebstrap.log" >&2 || true
        rm -f "$rootfs_tar.tmp"
        [[ $try == 3 ]] && die "mmdebstrap failed"
        sleep $((try * 5))
    done
    # Old package sets are no longer needed.
    find "$cache" -maxdepth 1 -name "rootfs-*.tar" ! -name "$(basename "$rootfs_tar")" -delete
    log "mmdebstrap done after $((SECONDS - start))s"
fi

kdeb_dir="$cache/debs"
mkdir -p "$kdeb_dir"
kdeb="$(ls "$kdeb_dir/${kpkg}_${kdeb_version//:/%3a}_"*.deb 2>/dev/null | head -n1 || true)"
if [[ -z "$kdeb" ]]; then
    log "downloading $kpkg $kdeb_version"
    (cd "$kdeb_dir" && apt-get download -q "$kpkg=$kdeb_version" >/dev/null 2>"$kdeb_dir/download.log") ||
        { cat "$kdeb_dir/download.log" >&2; die "apt-get download $kpkg failed"; }
    kdeb="$(ls "$kdeb_dir/${kpkg}_"*.deb | head -n1)"
    find "$kdeb_dir" -name 'linux-image-*.deb' ! -path "$kdeb" -delete
fi

# --- assemble --------------------------------------------------------------------

work="$out/.work"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

log "unpacking kernel $(basename "$kdeb")"
dpkg-deb -x "$kdeb" "$work/kernel"
kver="$(ls "$work/kernel/lib/modules")"
[[ -f "$work/kernel/boot/vmlinuz-$kver" ]] || die "no vmlinuz in $kdeb"

log "unpacking root"
rootfs="$work/rootfs"
mkdir -p "$rootfs"
tar -C "$rootfs" --numeric-owner -xf "$rootfs_tar"

# Prune what a read-only, single-purpose root never uses.
rm -rf "$rootfs"/usr/share/{man,info,locale,lintian,zsh,bash-completion} \
    "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/common-licenses "$rootfs"/etc/machine-id
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true

# Modules: the whole tree first so depmod can resolve dependencies, then only
# what was asked for and what that depends on.
kmods="$rootfs/lib/modules/$kver"
mkdir -p "$kmods"
cp -a "$work/kernel/lib/modules/$kver/." "$kmods/"
chroot "$rootfs" /sbin/depmod -a "$kver"
keep="$work/modules.keep"
: >"$keep"
for d in "${module_dirs[@]}"; do
    if [[ -e "$kmods/$d" ]]; then
        (cd "$kmods" && find "$d" -name '*.ko*') >>"$keep"
    else
        log "warning: no $d in $kver"
    fi
done
# modules.dep lists each module's dependencies transitively.
closure() { # file with relative module paths -> closure on stdout
    awk 'NR == FNR { want[$1] = 1; next }
         { m = $1; sub(/:$/, "", m); if (m in want) { print m; for (i = 2; i <= NF; i++) print $i } }' \
        "$1" "$kmods/modules.dep" | sort -u
}
closure "$keep" >"$keep.all"
(cd "$kmods" && find kernel -name '*.ko*' | sort) | comm -23 - "$keep.all" | (cd "$kmods" && xargs -r rm -f)
find "$kmods/kernel" -type d -empty -delete
chroot "$rootfs" /sbin/depmod -a "$kver"

# Binaries and the files that make a read-only root work.
install -m 0755 "$bin_berthd" "$rootfs/usr/local/bin/berthd"
install -m 0755 "$bin_shim" "$rootfs/usr/local/bin/berth-shim"
install -m 0755 "$bin_init" "$rootfs/sbin/berth-init"
# Written at boot by berth-init (the root is read-only).
ln -sfn ../run/berth/resolv.conf "$rootfs/etc/resolv.conf"
ln -sfn ../run/berth/hosts "$rootfs/etc/hosts"
echo berth >"$rootfs/etc/hostname"
# Mountpoints: /var/lib/berth is the data disk; the share parents that are not
# in a Debian root get a tmpfs at boot (see berth-init's mount plan).
mkdir -p "$rootfs/var/lib/berth" "$rootfs/Users" "$rootfs/Volumes" "$rootfs/home" "$rootfs/mnt" "$rootfs/media" \
    "$rootfs/etc/berth"
rm -rf "$rootfs/var/tmp" && ln -s ../tmp "$rootfs/var/tmp"
rm -rf "$rootfs/var/log" && ln -s ../run/log "$rootfs/var/log"
# busybox applets (vi, less, wget, nc, ...) for the debug shell, where the
# root has no real command of that name.
for applet in $(chroot "$rootfs" /bin/busybox --list); do
    found=0
    for d in usr/local/sbin usr/local/bin usr/sbin usr/bin sbin bin; do
        if [[ -e "$rootfs/$d/$applet" || -L "$rootfs/$d/$applet" ]]; then found=1; break; fi
    done
    [[ $found == 1 ]] || ln -s /bin/busybox "$rootfs/usr/local/bin/$applet"
done
cat >"$rootfs/etc/profile.d/berth.sh" <<'EOF'
export PS1='berth:\w# '
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export DOCKER_HOST=unix:///run/berth/docker.sock
EOF
printf '%s\n' "$kver" >"$rootfs/etc/berth/kernel-release"

log "making rootfs.img"
# Size: contents plus 20% and 16 MiB of slack for ext4 metadata.
kib="$(du -sk --apparent-size "$rootfs" | cut -f1)"
kib=$((kib + kib / 5 + 16384))
rm -f "$work/rootfs.img"
truncate -s "${kib}K" "$work/rootfs.img"
E2FSPROGS_FAKE_TIME=$epoch mkfs.ext4 -q -F -L berth-root -O ^has_journal -m 0 -U clear \
    -E root_owner=0:0,hash_seed=8c6a8f3e-0000-4000-8000-000000000001 \
    -d "$rootfs" "$work/rootfs.img"

log "making initrd.img"
initrd="$work/initrd"
mkdir -p "$initrd"/{dev,proc,sys,newroot,lib/modules/"$kver"}
mknod -m 0600 "$initrd/dev/console" c 5 1
mknod -m 0666 "$initrd/dev/null" c 1 3
install -m 0755 "$bin_init" "$initrd/init"
touch "$initrd/berth-initrd"
printf '%s\n' "${initrd_modules[@]}" | while read -r name; do
    awk -v n="$name" '{ m = $1; sub(/:$/, "", m); b = m; sub(/.*\//, "", b); sub(/\.ko.*$/, "", b)
        gsub(/-/, "_", b); nn = n; gsub(/-/, "_", nn); if (b == nn) { print m; exit } }' "$kmods/modules.dep"
done >"$work/initrd.want"
[[ "$(wc -l <"$work/initrd.want")" -eq "${#initrd_modules[@]}" ]] || die "initrd modules missing: $(cat "$work/initrd.want")"
closure "$work/initrd.want" >"$work/initrd.all"
while read -r m; do
    mkdir -p "$initrd/lib/modules/$kver/$(dirname "$m")"
    cp "$kmods/$m" "$initrd/lib/modules/$kver/$m"
done <"$work/initrd.all"
awk 'NR == FNR { keep[$1] = 1; next } { m = $1; sub(/:$/, "", m); if (m in keep) print }' \
    "$work/initrd.all" "$kmods/modules.dep" >"$initrd/lib/modules/$kver/modules.dep"
cp "$kmods/modules.builtin" "$initrd/lib/modules/$kver/"
(cd "$initrd" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc --owner=0:0 --reproducible) |
    gzip -9 -n >"$work/initrd.img"

# --- publish ---------------------------------------------------------------------

cp "$work/kernel/boot/vmlinuz-$kver" "$out/vmlinuz.tmp"
mv "$work/initrd.img" "$out/initrd.img.tmp"
mv "$work/rootfs.img" "$out/rootfs.img.tmp"
python3 - "$out" "$inputs_hash" "$kver" "$kpkg=$kdeb_version" "$suite" "$mirror" "$pkg_list" "$mm_key" \
    "$bin_berthd" "$bin_shim" "$bin_init" "$script_hash" <<'EOF'
import hashlib, json, os, sys, time
out, inputs, kver, kpkg, suite, mirror, pkgs, mm_key, berthd, shim, init, script = sys.argv[1:]
def digest(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
def entry(name):
    p = os.path.join(out, name + ".tmp")
    return {"sha256": digest(p), "size": os.path.getsize(p)}
manifest = {
    "inputs_sha256": inputs,
    "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    "kernel": {"release": kver, "package": kpkg},
    "rootfs": {"suite": suite, "mirror": mirror, "packages": pkgs.split(","), "mmdebstrap_key": mm_key, "format": "ext4, read-only, no journal"},
    "cmdline": "console=ttyS0 quiet berth.root=/dev/vda berth.data=/dev/vdb",
    "inputs": {
        "build_script_sha256": script,
        "berthd_sha256": digest(berthd),
        "berth_shim_sha256": digest(shim),
        "berth_init_sha256": digest(init),
    },
    "outputs": {n: entry(n) for n in ("vmlinuz", "initrd.img", "rootfs.img")},
}
with open(os.path.join(out, "manifest.json.tmp"), "w") as f:
    json.dump(manifest, f, indent=2)
    f.write("\n")
EOF
# The manifest last: a reader that sees the new manifest sees the new images.
for f in vmlinuz initrd.img rootfs.img manifest.json; do mv "$out/$f.tmp" "$out/$f"; done
log "built $out in $((SECONDS - start))s: kernel $kver, initrd $(du -h "$out/initrd.img" | cut -f1), rootfs $(du -h --apparent-size "$out/rootfs.img" | cut -f1) ($(du -h "$out/rootfs.img" | cut -f1) on disk)"
