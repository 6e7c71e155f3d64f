//! `berth-init`: PID 1 of the Berth guest VM.
//!
//! Stage 1 runs from the initrd (marker `/berth-initrd`): loads the modules
//! that mount the root, mounts the read-only root and switches to it, then
//! execs `/sbin/berth-init` there. Stage 2 sets up the guest (API mounts,
//! modules, cgroup v2, clock, data disk, network, host shares), runs berthd
//! (restarting it if it dies), relays TCP 2375 to its socket, keeps a root
//! shell on /dev/hvc0, reaps orphans, and powers off cleanly on the ACPI
//! power button or SIGTERM/SIGINT.
//!
//! Every step logs to the console as `berth-init: ...`; nothing panics. The
//! platform-neutral pieces (command line, guest.json, modules.dep, mount
//! plan, netlink messages) are in modules with unit tests.

mod cmdline;
mod engine;
mod guest;
mod modules;
mod mounts;
mod net;
mod power;
mod relay;
mod sys;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// PATH for everything berth-init starts.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DATA_DIR: &str = "/var/lib/berth";
const HOST_DIR: &str = "/run/berth/host";
const NEW_ROOT: &str = "/newroot";

/// Logs one line to the console (PID 1's stderr is /dev/console).
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!("berth-init: {}\n", format_args!($($arg)*));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

/// Modules for mounting the root (stage 1, in the initrd).
const ROOT_MODULES: [&str; 5] = ["virtio_pci", "virtio_blk", "crc32c_intel", "crc32c_generic", "ext4"];
/// Modules the guest and the engine need (stage 2). Others (nf_tables
/// expressions) are autoloaded by the kernel through /sbin/modprobe.
const GUEST_MODULES: [&str; 33] = [
    "virtio_pci", "virtio_blk", "crc32c_intel", "crc32c_generic", "ext4",
    "virtio_net", "virtio_console", "virtio_rng", "9pnet_virtio", "9p", "fuse", "virtiofs",
    "overlay", "bridge", "br_netfilter", "veth", "tun",
    "nf_conntrack", "nf_nat", "nf_tables", "nft_chain_nat", "nft_nat", "nft_masq", "nft_ct",
    "nft_fib_inet", "nft_fib_ipv4", "nft_fib_ipv6", "nft_reject_inet", "nft_redir",
    "vmw_vsock_virtio_transport", "button", "evdev",
    // Free page reporting to the host (QEMU's virtio-balloon-pci,free-page-reporting=on).
    "virtio_balloon",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--version") {
        println!("berth-init {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    if sys::getpid() != 1 {
        eprintln!("berth-init: must run as PID 1 (the Berth guest's init); see vm-image/README.md");
        std::process::exit(2);
    }
    // SAFETY: single-threaded at this point; set_var is only unsafe with threads.
    std::env::set_var("PATH", PATH);
    if Path::new("/berth-initrd").exists() {
        stage1();
    } else {
        stage2();
    }
}

/// Logs and powers off; used when the guest cannot continue.
fn fatal(msg: &str) -> ! {
    log!("fatal: {msg}");
    log!("powering off");
    sys::sync();
    let e = sys::power_off();
    log!("power off failed: {e}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn read_cmdline() -> cmdline::Cmdline {
    match std::fs::read_to_string("/proc/cmdline") {
        Ok(s) => cmdline::parse(&s),
        Err(e) => {
            log!("read /proc/cmdline: {e}; using defaults");
            cmdline::Cmdline::default()
        }
    }
}

fn mount_or_log(source: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> bool {
    let _ = std::fs::create_dir_all(target);
    match sys::mount(source, Path::new(target), fstype, flags, data) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => true,
        Err(e) => {
            log!("mount {fstype} on {target}: {e}");
            false
        }
    }
}

fn wait_for(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

// ---------------------------------------------------------------- stage 1

fn stage1() {
    let nodev = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
    mount_or_log("proc", "/proc", "proc", nodev, "");
    mount_or_log("sysfs", "/sys", "sysfs", nodev, "");
    mount_or_log("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    let c = read_cmdline();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    log!("starting (kernel {}, {:.2}s since boot)", release.trim(), sys::uptime());
    if c.probe {
        log!("accelerator probe boot: powering off");
        let e = sys::power_off();
        fatal(&format!("reboot(RB_POWER_OFF): {e}"));
    }
    match modules::Loader::for_running_kernel() {
        Ok(mut l) => {
            l.load_all(&ROOT_MODULES);
        }
        Err(e) => log!("initrd modules: {e}"),
    }
    if !wait_for(Path::new(&c.root), Duration::from_secs(10)) {
        fatal(&format!("root device {} did not appear (virtio-blk drive missing?)", c.root));
    }
    let _ = std::fs::create_dir_all(NEW_ROOT);
    if let Err(e) = sys::mount(&c.root, Path::new(NEW_ROOT), &c.root_fstype, libc::MS_RDONLY, "") {
        fatal(&format!("mount root {} ({}) read-only: {e}", c.root, c.root_fstype));
    }
    if !Path::new(NEW_ROOT).join("sbin/berth-init").exists() {
        fatal(&format!("{} has no /sbin/berth-init: not a Berth root image", c.root));
    }
    // Free the initrd's memory: its files are no longer needed.
    let _ = std::fs::remove_dir_all("/lib");
    let _ = std::fs::remove_file("/init");
    for d in ["/dev", "/proc", "/sys"] {
        let target = format!("{NEW_ROOT}{d}");
        if let Err(e) = sys::mount(d, Path::new(&target), "", libc::MS_MOVE, "") {
            log!("move {d} to the new root: {e}");
        }
    }
    if let Err(e) = std::env::set_current_dir(NEW_ROOT) {
        fatal(&format!("chdir {NEW_ROOT}: {e}"));
    }
    if let Err(e) = sys::mount(".", Path::new("/"), "", libc::MS_MOVE, "") {
        fatal(&format!("move the new root to /: {e}"));
    }
    if let Err(e) = sys::chroot(Path::new(".")) {
        fatal(&format!("chroot: {e}"));
    }
    let _ = std::env::set_current_dir("/");
    use std::os::unix::process::CommandExt;
    let e = Command::new("/sbin/berth-init").exec();
    fatal(&format!("exec /sbin/berth-init in the root: {e}"));
}

// ---------------------------------------------------------------- stage 2

fn early_mounts() {
    let nodev = libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV;
    mount_or_log("proc", "/proc", "proc", nodev, "");
    mount_or_log("sysfs", "/sys", "sysfs", nodev, "");
    mount_or_log("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755");
    mount_or_log("devpts", "/dev/pts", "devpts", libc::MS_NOSUID | libc::MS_NOEXEC, "gid=5,mode=620,ptmxmode=666");
    mount_or_log("shm", "/dev/shm", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=1777");
    mount_or_log("mqueue", "/dev/mqueue", "mqueue", nodev, "");
    mount_or_log("tmpfs", "/run", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=755");
    mount_or_log("tmpfs", "/tmp", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=1777");
    for (link, target) in [("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"), ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2"), ("/dev/core", "/proc/kcore")] {
        let _ = std::os::unix::fs::symlink(target, link);
    }
    for d in ["/run/berth", "/run/berth/exec", HOST_DIR, "/run/log", "/run/lock"] {
        if let Err(e) = std::fs::create_dir_all(d) {
            log!("create {d}: {e}");
        }
    }
    if mount_or_log("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, "nsdelegate,memory_recursiveprot")
        || mount_or_log("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, "")
    {
        enable_controllers();
    }
}

fn enable_controllers() {
    let root = Path::new("/sys/fs/cgroup");
    let available = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
    let mut enabled = Vec::new();
    for c in ["cpuset", "cpu", "io", "memory", "pids", "hugetlb", "rdma", "misc"] {
        if !available.split_whitespace().any(|a| a == c) {
            continue;
        }
        match std::fs::write(root.join("cgroup.subtree_control"), format!("+{c}")) {
            Ok(()) => enabled.push(c),
            Err(e) => log!("cgroup: enable {c}: {e}"),
        }
    }
    log!("cgroup v2 controllers: {}", enabled.join(" "));
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// Earliest plausible time (2024-01-01): anything before means no clock.
const SANE_EPOCH: i64 = 1_704_067_200;

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// The kernel sets the clock from the RTC at boot (RTC_HCTOSYS); check, and
/// read the RTC ourselves if it did not.
fn seed_clock() {
    if now_secs() >= SANE_EPOCH {
        return;
    }
    match sys::read_rtc() {
        Ok((y, mo, d, h, mi, s)) => {
            let t = days_from_civil(y, mo, d) * 86400 + (h * 3600 + mi * 60 + s) as i64;
            if t >= SANE_EPOCH {
                match sys::set_clock(t) {
                    Ok(()) => log!("clock set from the RTC"),
                    Err(e) => log!("set clock: {e}"),
                }
            }
        }
        Err(e) => log!("read RTC: {e}"),
    }
}

/// Last resort: the host wrote guest.json just before boot; its mtime is
/// the host's clock.
fn clock_from_file(p: &Path) {
    if now_secs() >= SANE_EPOCH {
        return;
    }
    if let Ok(t) = std::fs::metadata(p).and_then(|m| m.modified()) {
        if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
            if d.as_secs() as i64 >= SANE_EPOCH && sys::set_clock(d.as_secs() as i64).is_ok() {
                log!("clock set from the host's guest.json");
            }
        }
    }
}

/// What happened with the data disk.
enum DataDisk {
    Mounted,
    /// The engine must not start; the message says why and how to repair.
    Unusable(String),
}

/// ext2/3/4 magic at byte 1080, or a blank start (first 1 MiB all zero).
enum DiskContent {
    Ext,
    Blank,
    Other,
}

fn probe_disk(dev: &str) -> std::io::Result<DiskContent> {
    use std::io::Read;
    let mut f = std::fs::File::open(dev)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    if n > 1081 && buf[1080] == 0x53 && buf[1081] == 0xEF {
        return Ok(DiskContent::Ext);
    }
    if buf[..n].iter().all(|b| *b == 0) {
        return Ok(DiskContent::Blank);
    }
    Ok(DiskContent::Other)
}

fn run_tool(cmd: &str, args: &[&str]) -> std::io::Result<std::process::ExitStatus> {
    sys::command(cmd).args(args).stdin(Stdio::null()).env("PATH", PATH).status()
}

fn setup_data_disk(dev: &str) -> DataDisk {
    if !wait_for(Path::new(dev), Duration::from_secs(5)) {
        return DataDisk::Unusable(format!("data disk {dev} not found (second virtio drive missing?)"));
    }
    match probe_disk(dev) {
        Err(e) => return DataDisk::Unusable(format!("read data disk {dev}: {e}")),
        Ok(DiskContent::Other) => {
            return DataDisk::Unusable(format!(
                "data disk {dev} holds something that is not ext4; not formatting it (inspect it from the shell)"
            ))
        }
        Ok(DiskContent::Blank) => {
            log!("data disk {dev} is blank: mkfs.ext4 -L berth-data");
            let t = Instant::now();
            match run_tool("mkfs.ext4", &["-q", "-F", "-L", "berth-data", "-m", "1", "-E", "lazy_itable_init=1,lazy_journal_init=1", dev]) {
                Ok(s) if s.success() => log!("data disk formatted in {:.1}s", t.elapsed().as_secs_f64()),
                Ok(s) => return DataDisk::Unusable(format!("mkfs.ext4 {dev}: {s}")),
                Err(e) => return DataDisk::Unusable(format!("run mkfs.ext4: {e}")),
            }
        }
        Ok(DiskContent::Ext) => match run_tool("e2fsck", &["-p", dev]) {
            // 0: clean, 1: errors fixed, 2: fixed, reboot advised (nothing mounted it yet).
            Ok(s) if matches!(s.code(), Some(0)) => {}
            Ok(s) if matches!(s.code(), Some(1) | Some(2)) => log!("e2fsck {dev}: errors corrected"),
            Ok(s) => {
                return DataDisk::Unusable(format!(
                    "e2fsck -p {dev} could not repair the data disk ({s}); run `e2fsck -f {dev}` in `berth vm shell`, then restart the VM"
                ))
            }
            Err(e) => log!("run e2fsck: {e}; mounting unchecked"),
        },
    }
    match sys::mount(dev, Path::new(DATA_DIR), "ext4", libc::MS_NOATIME | libc::MS_NODEV | libc::MS_NOSUID, "") {
        Ok(()) => {
            log!("data disk {dev} mounted at {DATA_DIR}");
            grow_data_fs(dev);
            warn_if_nearly_full();
            DataDisk::Mounted
        }
        Err(e) => DataDisk::Unusable(format!("mount data disk {dev} at {DATA_DIR}: {e}")),
    }
}

/// The host grows the disk image when the user asks for a larger `--disk`;
/// the filesystem follows here, online (ext4 grows while mounted, in well
/// under a second). Never shrinks.
fn grow_data_fs(dev: &str) {
    let (Some(dev_bytes), Some(fs_bytes)) = (block_device_bytes(dev), ext_fs_bytes(dev)) else { return };
    if !should_grow(dev_bytes, fs_bytes) {
        return;
    }
    let t = Instant::now();
    match sys::command("resize2fs").arg(dev).stdin(Stdio::null()).stdout(Stdio::null()).env("PATH", PATH).status() {
        Ok(s) if s.success() => log!(
            "data disk {dev} grown from {} to {} MiB in {:.1}s",
            fs_bytes >> 20,
            ext_fs_bytes(dev).unwrap_or(dev_bytes) >> 20,
            t.elapsed().as_secs_f64()
        ),
        Ok(s) => log!("resize2fs {dev}: {s}; the data disk keeps its old size"),
        Err(e) => log!("run resize2fs: {e}; the data disk keeps its old size"),
    }
}

/// Whether a device of `dev_bytes` holds room for a larger filesystem than
/// `fs_bytes`: at least 64 MiB more (sizes are whole GiB; tails smaller than
/// a block group are not worth a resize at every boot).
fn should_grow(dev_bytes: u64, fs_bytes: u64) -> bool {
    dev_bytes.saturating_sub(fs_bytes) >= 64 << 20
}

/// Size of block device `dev` (`/dev/vdb`) from sysfs.
fn block_device_bytes(dev: &str) -> Option<u64> {
    let name = Path::new(dev).file_name()?.to_str()?;
    let sectors: u64 = std::fs::read_to_string(format!("/sys/class/block/{name}/size")).ok()?.trim().parse().ok()?;
    Some(sectors * 512)
}

/// Size of the ext2/3/4 filesystem on `dev`, from its superblock.
fn ext_fs_bytes(dev: &str) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(dev).ok()?;
    let mut sb = [0u8; 1024];
    f.seek(SeekFrom::Start(1024)).ok()?;
    f.read_exact(&mut sb).ok()?;
    ext_superblock_bytes(&sb)
}

/// Filesystem size from an ext superblock (the 1024 bytes at offset 1024).
fn ext_superblock_bytes(sb: &[u8]) -> Option<u64> {
    let u32_at = |o: usize| sb.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    if sb.get(0x38..0x3a)? != [0x53, 0xEF] {
        return None;
    }
    let log_block = u32_at(0x18)?;
    if log_block > 6 {
        return None;
    }
    const INCOMPAT_64BIT: u32 = 0x80;
    let hi = if u32_at(0x60)? & INCOMPAT_64BIT != 0 { u64::from(u32_at(0x150)?) } else { 0 };
    let blocks = (hi << 32) | u64::from(u32_at(0x4)?);
    Some(blocks * (1024u64 << log_block))
}

/// A console line when the data disk is (nearly) full, since that is why
/// pulls and new containers will fail.
fn warn_if_nearly_full() {
    let Ok(c) = std::ffi::CString::new(DATA_DIR) else { return };
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return;
    }
    let frsize = st.f_frsize as u64;
    let (free, total) = (st.f_bfree as u64 * frsize, st.f_blocks as u64 * frsize);
    if nearly_full(free, total) {
        log!(
            "the data disk is nearly full ({} MiB free of {} MiB): pulls and new containers will fail with \"no space left on device\"; free space (docker system prune, docker volume rm) or restart the VM with a larger --disk",
            free >> 20,
            total >> 20
        );
    }
}

/// Less than 2% or 100 MiB free, whichever is smaller.
fn nearly_full(free: u64, total: u64) -> bool {
    free < (total / 50).min(100 << 20)
}

/// Mounts the host config share and reads guest.json.
fn host_config() -> (guest::GuestConfig, bool) {
    let host = Path::new(HOST_DIR);
    let mounted = match mounts::mount_share("berthcfg", host, guest::ShareType::NineP, false, mounts::NINEP_CFG_OPTS) {
        Ok(()) => true,
        Err(e9) => match mounts::mount_share("berthcfg", host, guest::ShareType::Virtiofs, false, "") {
            Ok(()) => true,
            Err(_) => {
                log!("host config share berthcfg not mounted ({e9}); no shares, default engine settings");
                false
            }
        },
    };
    if !mounted {
        return (guest::GuestConfig::default(), false);
    }
    let file = host.join("guest.json");
    clock_from_file(&file);
    let cfg = match std::fs::read_to_string(&file) {
        Ok(text) => match guest::parse(&text) {
            Ok(c) => c,
            Err(e) => {
                log!("{}: {e}; using defaults", file.display());
                guest::GuestConfig::default()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => guest::GuestConfig::default(),
        Err(e) => {
            log!("read {}: {e}; using defaults", file.display());
            guest::GuestConfig::default()
        }
    };
    (cfg, true)
}

fn write_file(path: &str, content: &str) {
    if let Err(e) = std::fs::write(path, content) {
        log!("write {path}: {e}");
    }
}

fn stage2() {
    let t0 = Instant::now();
    if let Err(e) = sys::block_signals() {
        log!("block signals: {e}");
    }
    early_mounts();
    let c = read_cmdline();
    match modules::Loader::for_running_kernel() {
        Ok(mut l) => {
            let failed = l.load_all(&GUEST_MODULES);
            if failed > 0 {
                log!("{failed} module(s) failed to load");
            }
        }
        Err(e) => log!("modules: {e}"),
    }
    if let Err(e) = sys::sethostname("berth") {
        log!("set hostname: {e}");
    }
    seed_clock();

    let data = setup_data_disk(&c.data);

    let (cfg, have_host_dir) = host_config();
    let gateway = cfg.host_gateway.clone();
    write_file("/run/berth/resolv.conf", &net::resolv_conf());
    write_file("/run/berth/hosts", &net::hosts_file(&gateway));
    match net::configure(net::GATEWAY) {
        Ok(name) => log!("network: {name} 10.0.2.15/24 via {}", net::GATEWAY),
        Err(e) => log!("network: {e}"),
    }
    write_file("/proc/sys/net/ipv4/ip_forward", "1");
    write_file("/proc/sys/net/ipv6/conf/all/forwarding", "1");

    let (steps, errors) = mounts::plan(&cfg.shares);
    for e in errors {
        log!("{e}");
    }
    mounts::apply(&steps);

    power::watch(Duration::from_secs(5));

    let mut sup = Supervisor::new(&c, &cfg, have_host_dir);
    match &data {
        DataDisk::Mounted if c.no_engine => log!("berth.noengine: not starting berthd"),
        DataDisk::Mounted => sup.start_engine(),
        DataDisk::Unusable(why) => {
            log!("{why}");
            log!("the engine is NOT started; the shell on the virtio console is available");
        }
    }
    match relay::bind() {
        Ok(l) => {
            let gw = gateway.parse().unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 2, 2)));
            let sock = PathBuf::from(engine::SOCKET);
            if let Err(e) = std::thread::Builder::new().name("relay".into()).spawn(move || relay::serve(l, sock, gw)) {
                log!("relay: spawn: {e}");
            }
        }
        Err(e) => log!("relay: bind 0.0.0.0:{}: {e}", relay::PORT),
    }
    sup.spawn_shell();
    log!("guest set up in {:.2}s ({:.2}s since boot)", t0.elapsed().as_secs_f64(), sys::uptime());
    sup.run();
}

// ------------------------------------------------------------ supervisor

struct Supervisor {
    args: Vec<String>,
    sink: Option<engine::LogSink>,
    engine: Option<(Child, Instant)>,
    engine_restart_at: Option<Instant>,
    backoff: Duration,
    engine_wanted: bool,
    shell: Option<u32>,
    shell_started: Instant,
    shell_restart_at: Option<Instant>,
    shell_backoff: Duration,
}

impl Supervisor {
    fn new(c: &cmdline::Cmdline, cfg: &guest::GuestConfig, have_host_dir: bool) -> Supervisor {
        let daemon_json = Path::new(HOST_DIR).join("daemon.json");
        let daemon_json = (have_host_dir && daemon_json.exists()).then_some(daemon_json);
        let daemon_text = daemon_json.as_ref().and_then(|p| std::fs::read_to_string(p).ok());
        let flags = engine::Flags::detect(engine::accepts, daemon_text.as_deref());
        let mut extra = cfg.engine_args.clone();
        if c.debug && !extra.iter().any(|a| a == "--debug" || a == "-D") {
            extra.push("--debug".into());
        }
        let args = engine::args(daemon_json.as_deref(), &cfg.host_gateway, flags, &extra);
        let log_path = if have_host_dir { PathBuf::from(HOST_DIR).join("berthd.log") } else { PathBuf::from("/run/log/berthd.log") };
        let sink = match engine::LogSink::start(log_path) {
            Ok(s) => Some(s),
            Err(e) => {
                log!("engine log: {e}");
                None
            }
        };
        Supervisor {
            args,
            sink,
            engine: None,
            engine_restart_at: None,
            backoff: Duration::from_secs(1),
            engine_wanted: false,
            shell: None,
            shell_started: Instant::now(),
            shell_restart_at: None,
            shell_backoff: Duration::from_secs(1),
        }
    }

    fn start_engine(&mut self) {
        self.engine_wanted = true;
        self.spawn_engine();
        let sock = PathBuf::from(engine::SOCKET);
        let _ = std::thread::Builder::new().name("ready".into()).spawn(move || {
            let t = Instant::now();
            let mut warned = false;
            loop {
                if engine::ping(&sock) {
                    log!("ready ({:.2}s since boot, engine answered after {:.2}s)", sys::uptime(), t.elapsed().as_secs_f64());
                    return;
                }
                if !warned && t.elapsed() > Duration::from_secs(60) {
                    log!("the engine has not answered /_ping for 60s (see berthd.log)");
                    warned = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }

    fn spawn_engine(&mut self) {
        let Some(sink) = &self.sink else {
            log!("no engine log sink; not starting berthd");
            return;
        };
        match engine::spawn(&self.args, sink) {
            Ok(child) => {
                log!("berthd started (pid {}): berthd {}; log {}", child.id(), self.args.join(" "), sink.path().display());
                sink.note(&format!("berthd started: {}", self.args.join(" ")));
                self.engine = Some((child, Instant::now()));
            }
            Err(e) => {
                log!("start berthd: {e}; retrying in {}s", self.backoff.as_secs());
                self.schedule_engine_restart();
            }
        }
    }

    fn schedule_engine_restart(&mut self) {
        self.engine_restart_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
    }

    fn spawn_shell(&mut self) {
        let tty = Path::new("/dev/hvc0");
        if !tty.exists() {
            log!("no /dev/hvc0 (virtconsole): no shell");
            return;
        }
        let open = || std::fs::OpenOptions::new().read(true).write(true).open(tty);
        let (i, o, e) = match (open(), open(), open()) {
            (Ok(i), Ok(o), Ok(e)) => (i, o, e),
            (Err(err), _, _) | (_, Err(err), _) | (_, _, Err(err)) => {
                log!("open /dev/hvc0: {err}");
                self.shell_restart_at = Some(Instant::now() + Duration::from_secs(10));
                return;
            }
        };
        let (prog, args): (&str, &[&str]) =
            if Path::new("/bin/busybox").exists() { ("/bin/busybox", &["sh", "-l"]) } else { ("/bin/sh", &["-l"]) };
        let mut cmd = sys::command(prog);
        cmd.args(args)
            .stdin(i)
            .stdout(o)
            .stderr(e)
            .current_dir("/root")
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("TERM", "xterm")
            .env("ENV", "/etc/profile.d/berth.sh")
            .env("DOCKER_HOST", format!("unix://{}", engine::SOCKET));
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure only calls async-signal-safe functions (setsid, ioctl).
        unsafe {
            cmd.pre_exec(sys::take_controlling_tty);
        }
        match cmd.spawn() {
            Ok(child) => {
                self.shell = Some(child.id());
                self.shell_started = Instant::now();
                // The main loop reaps it by pid; dropping Child neither waits nor kills.
                drop(child);
            }
            Err(err) => {
                log!("start shell on /dev/hvc0: {err}");
                self.shell_restart_at = Some(Instant::now() + Duration::from_secs(10));
            }
        }
    }

    fn on_exit(&mut self, r: sys::Reaped) {
        if self.engine.as_ref().is_some_and(|(c, _)| c.id() as i32 == r.pid) {
            let (_, started) = self.engine.take().expect("checked above");
            let ran = started.elapsed();
            if ran > Duration::from_secs(60) {
                self.backoff = Duration::from_secs(1);
            }
            let then = if self.engine_wanted { format!("; restarting in {}s", self.backoff.as_secs()) } else { String::new() };
            let msg = format!("berthd (pid {}) exited with {} after {:.1}s{then}", r.pid, sys::describe_status(r.status), ran.as_secs_f64());
            log!("{msg}");
            if let Some(s) = &self.sink {
                s.note(&msg);
            }
            if self.engine_wanted {
                self.schedule_engine_restart();
            }
        } else if self.shell == Some(r.pid as u32) {
            self.shell = None;
            if self.shell_started.elapsed() > Duration::from_secs(5) {
                self.shell_backoff = Duration::from_millis(200);
            } else {
                self.shell_backoff = (self.shell_backoff * 2).min(Duration::from_secs(30));
            }
            self.shell_restart_at = Some(Instant::now() + self.shell_backoff);
        }
    }

    /// The main loop: signals, reaping, restarts, power button.
    fn run(&mut self) -> ! {
        loop {
            let sig = sys::wait_signal(Duration::from_millis(250));
            while let Some(r) = sys::reap_one() {
                self.on_exit(r);
            }
            match sig {
                Some(s) if s != libc::SIGCHLD => {
                    let name = match s {
                        libc::SIGTERM => "SIGTERM",
                        libc::SIGINT => "SIGINT",
                        libc::SIGUSR1 => "SIGUSR1 (halt)",
                        libc::SIGUSR2 => "SIGUSR2 (poweroff)",
                        _ => "SIGPWR",
                    };
                    self.shutdown(name);
                }
                _ => {}
            }
            if power::REQUESTED.load(Ordering::SeqCst) {
                self.shutdown("ACPI power button");
            }
            let now = Instant::now();
            if self.engine_restart_at.is_some_and(|t| now >= t) {
                self.engine_restart_at = None;
                self.spawn_engine();
            }
            if self.shell_restart_at.is_some_and(|t| now >= t) {
                self.shell_restart_at = None;
                self.spawn_shell();
            }
        }
    }

    /// Reaps until `done` says stop or the deadline passes.
    fn reap_until(&mut self, deadline: Instant, done: impl Fn(&Self) -> bool) -> bool {
        loop {
            while let Some(r) = sys::reap_one() {
                self.on_exit(r);
            }
            if done(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn shutdown(&mut self, why: &str) -> ! {
        let t = Instant::now();
        log!("power-off requested ({why})");
        self.engine_wanted = false;
        self.engine_restart_at = None;
        if let Some((child, _)) = &self.engine {
            let pid = child.id() as i32;
            log!("stopping berthd (pid {pid}, SIGTERM, up to 10s)");
            let _ = sys::kill(pid, libc::SIGTERM);
            if self.reap_until(Instant::now() + Duration::from_secs(10), |s| s.engine.is_none()) {
                log!("berthd stopped after {:.1}s", t.elapsed().as_secs_f64());
            } else {
                log!("berthd did not stop in 10s: SIGKILL");
                let _ = sys::kill(pid, libc::SIGKILL);
            }
        }
        if let Some(pid) = self.shell.take() {
            // An interactive shell ignores SIGTERM; SIGHUP is its hang-up.
            let _ = sys::kill(pid as i32, libc::SIGHUP);
        }
        log!("sending SIGTERM to all processes");
        let _ = sys::kill(-1, libc::SIGTERM);
        let quiet = self.reap_until(Instant::now() + Duration::from_secs(2), |_| sys::no_children());
        if !quiet {
            log!("sending SIGKILL to remaining processes");
            let _ = sys::kill(-1, libc::SIGKILL);
            self.reap_until(Instant::now() + Duration::from_secs(3), |_| sys::no_children());
        }
        log!("syncing");
        sys::sync();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for target in mounts::unmount_order(&mounts::parse_mountinfo(&mountinfo), DATA_DIR) {
            let p = Path::new(&target);
            match sys::umount(p, 0) {
                Ok(()) => log!("unmounted {target}"),
                // A host share still open (the engine log pump holds berthd.log):
                // 9p and virtiofs keep no dirty state in the guest, detaching is safe.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && target != DATA_DIR && sys::umount(p, libc::MNT_DETACH).is_ok() => {
                    log!("detached {target} (busy)")
                }
                Err(e) => {
                    log!("unmount {target}: {e}");
                    if target == DATA_DIR {
                        match sys::mount("", p, "", libc::MS_REMOUNT | libc::MS_RDONLY, "") {
                            Ok(()) => log!("remounted {target} read-only"),
                            Err(e) => log!("remount {target} read-only: {e}"),
                        }
                    } else if sys::umount(p, libc::MNT_DETACH).is_ok() {
                        log!("detached {target}");
                    }
                }
            }
        }
        sys::sync();
        log!("powering off ({:.1}s)", t.elapsed().as_secs_f64());
        let e = sys::power_off();
        fatal(&format!("reboot(RB_POWER_OFF): {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_superblock_size() {
        let mut sb = [0u8; 1024];
        assert_eq!(ext_superblock_bytes(&sb), None, "no magic");
        sb[0x38..0x3a].copy_from_slice(&[0x53, 0xEF]);
        sb[0x18..0x1c].copy_from_slice(&2u32.to_le_bytes()); // 4 KiB blocks
        sb[0x4..0x8].copy_from_slice(&1_048_576u32.to_le_bytes());
        assert_eq!(ext_superblock_bytes(&sb), Some(4 << 30));
        // The high word counts only with the 64bit feature.
        sb[0x150..0x154].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(ext_superblock_bytes(&sb), Some(4 << 30));
        sb[0x60..0x64].copy_from_slice(&0x80u32.to_le_bytes());
        assert_eq!(ext_superblock_bytes(&sb), Some(((1u64 << 32) + 1_048_576) * 4096));
    }

    #[test]
    fn grows_only_by_a_worthwhile_amount() {
        assert!(should_grow(6 << 30, 4 << 30));
        assert!(!should_grow(4 << 30, 4 << 30));
        assert!(!should_grow((4 << 30) + (1 << 20), 4 << 30));
        assert!(!should_grow(4 << 30, 6 << 30), "never shrinks");
    }

    #[test]
    fn nearly_full_threshold() {
        assert!(nearly_full(0, 4 << 30));
        assert!(nearly_full(50 << 20, 4 << 30));
        assert!(!nearly_full(200 << 20, 4 << 30));
        assert!(nearly_full(10 << 20, 1 << 30), "2% of 1 GiB is ~20 MiB");
    }

    #[test]
    fn civil_dates_convert_to_unix_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2024, 1, 1) * 86400, SANE_EPOCH);
        assert_eq!(days_from_civil(2000, 3, 1), 11017);
    }
}
