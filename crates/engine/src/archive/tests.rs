//! Unpacker and packer tests. Most need root (mknod, chown, `trusted.*`
//! xattrs) and skip with a message without it; CI runs them as root.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::*;

fn root_or_skip(test: &str) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    eprintln!("skipping {test}: needs root (mknod, chown, trusted.* xattrs)");
    false
}

fn owners() -> ApplyOptions {
    ApplyOptions { same_owner: true, ..ApplyOptions::default() }
}

/// Builds layer tars entry by entry, writing names into the header bytes
/// directly so tests can produce what a hostile tar would (`..`, absolute
/// paths), which `tar::Header::set_path` refuses.
struct Layer {
    builder: tar::Builder<Vec<u8>>,
}

impl Layer {
    fn new() -> Self {
        Layer { builder: tar::Builder::new(Vec::new()) }
    }

    fn entry(&mut self, kind: EntryType, name: &str, link: &str, mode: u32, contents: &[u8]) -> &mut Self {
        self.entry_owned(kind, name, link, mode, (0, 0), contents)
    }

    fn entry_owned(
        &mut self,
        kind: EntryType,
        name: &str,
        link: &str,
        mode: u32,
        (uid, gid): (u64, u64),
        contents: &[u8],
    ) -> &mut Self {
        let mut header = Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_mtime(1_600_000_000);
        header.set_size(contents.len() as u64);
        header.set_cksum();
        self.builder.append(&header, contents).expect("appending to a Vec cannot fail");
        self
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.entry(EntryType::Directory, name, "", 0o755, b"")
    }

    fn file(&mut self, name: &str, contents: &[u8]) -> &mut Self {
        self.entry(EntryType::Regular, name, "", 0o644, contents)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(EntryType::Symlink, name, target, 0o777, b"")
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(EntryType::Link, name, target, 0o644, b"")
    }

    fn device(&mut self, kind: EntryType, name: &str, major: u32, minor: u32) -> &mut Self {
        let mut header = Header::new_ustar();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(0o640);
        header.set_mtime(1_600_000_000);
        header.set_size(0);
        header.set_device_major(major).expect("ustar headers have device fields");
        header.set_device_minor(minor).expect("ustar headers have device fields");
        header.set_cksum();
        self.builder.append(&header, &b""[..]).expect("appending to a Vec cannot fail");
        self
    }

    /// PAX records for the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.builder.append_pax_extensions(records.iter().copied()).expect("appending to a Vec cannot fail");
        self
    }

    fn bytes(&mut self) -> Vec<u8> {
        let mut out = self.builder.get_ref().clone();
        out.extend_from_slice(&[0; 1024]);
        out
    }
}

/// A temporary directory holding the empty destination and a sibling
/// `outside` directory that no layer may touch.
struct Sandbox {
    tmp: tempfile::TempDir,
    before: Vec<String>,
}

impl Sandbox {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("creating a tempdir");
        fs::create_dir(tmp.path().join("dest")).expect("creating dest");
        fs::create_dir(tmp.path().join("outside")).expect("creating outside");
        fs::write(tmp.path().join("outside/secret"), b"untouched").expect("writing outside/secret");
        let mut sandbox = Sandbox { tmp, before: Vec::new() };
        sandbox.before = sandbox.everything_but_dest();
        sandbox
    }

    fn dest(&self) -> PathBuf {
        self.tmp.path().join("dest")
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    fn apply(&self, layer: &[u8]) -> Result<ApplyStats, ArchiveError> {
        apply_layer(layer, &self.dest(), &owners())
    }

    /// The names next to `dest`, and everything about `outside`.
    fn everything_but_dest(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.tmp.path())
            .expect("reading the sandbox")
            .map(|e| e.expect("reading a sandbox entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let md = fs::symlink_metadata(self.outside()).expect("outside still exists");
        names.push(format!(
            "outside mode={:o} mtime={} xattrs={:?}",
            md.mode(),
            md.mtime(),
            xattrs_of(&self.outside())
        ));
        names.extend(describe_tree(&self.outside(), true));
        names
    }

    fn assert_outside_untouched(&self) {
        assert_eq!(self.everything_but_dest(), self.before, "something outside dest changed");
        assert!(fs::symlink_metadata(self.dest()).expect("dest still exists").is_dir());
    }
}

/// One line per entry under `root` (not `root` itself), sorted, with every
/// attribute the unpacker sets; symlinks are never followed.
fn describe_tree(root: &Path, with_times: bool) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, with_times: bool, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .expect("reading a test directory")
            .map(|e| e.expect("reading a test directory entry").file_name())
            .collect();
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let rel = path.strip_prefix(root).expect("walk stays under root").to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&path).expect("stat of a listed entry");
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                "dir".to_owned()
            } else if ft.is_symlink() {
                format!("symlink->{}", fs::read_link(&path).expect("readlink").display())
            } else if ft.is_char_device() {
                format!("char {}:{}", rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()))
            } else if ft.is_block_device() {
                format!("block {}:{}", rustix::fs::major(md.rdev()), rustix::fs::minor(md.rdev()))
            } else if ft.is_fifo() {
                "fifo".to_owned()
            } else {
                let mut contents = Vec::new();
                fs::File::open(&path).and_then(|mut f| f.read_to_end(&mut contents)).expect("reading a file");
                format!("file {:?}", String::from_utf8_lossy(&contents))
            };
            let mtime = if with_times { md.mtime().to_string() } else { String::new() };
            out.push(format!(
                "{rel} {kind} mode={:o} owner={}:{} nlink={} mtime={mtime} xattrs={:?}",
                md.mode() & 0o7777,
                md.uid(),
                md.gid(),
                if ft.is_dir() { 0 } else { md.nlink() },
                xattrs_of(&path),
            ));
            if ft.is_dir() {
                walk(root, &path, with_times, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, with_times, &mut out);
    out
}

fn xattrs_of(path: &Path) -> Vec<(String, String)> {
    let mut list = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut list[..]).unwrap_or(0);
    let mut out = Vec::new();
    for key in list[..n].split(|b| *b == 0).filter(|k| !k.is_empty()) {
        let mut value = vec![0u8; 4096];
        let len = rustix::fs::lgetxattr(path, key, &mut value[..]).expect("reading a listed xattr");
        out.push((String::from_utf8_lossy(key).into_owned(), String::from_utf8_lossy(&value[..len]).into_owned()));
    }
    out.sort();
    out
}

fn xattr(path: &Path, key: &str) -> Option<Vec<u8>> {
    let mut value = vec![0u8; 4096];
    let len = rustix::fs::lgetxattr(path, key, &mut value[..]).ok()?;
    value.truncate(len);
    Some(value)
}

fn rejection(result: Result<ApplyStats, ArchiveError>) -> Rejection {
    match result {
        Err(ArchiveError::ValidateEntry { reason, .. }) => reason,
        other => panic!("expected a refused entry, got {other:?}"),
    }
}

#[test]
fn whiteout_becomes_overlay_char_device() {
    if !root_or_skip("whiteout_becomes_overlay_char_device") {
        return;
    }
    let sandbox = Sandbox::new();
    let layer = Layer::new().dir("etc/").file("etc/.wh.passwd", b"").bytes();

    let stats = sandbox.apply(&layer).expect("applying the layer");

    let md = fs::symlink_metadata(sandbox.dest().join("etc/passwd")).expect("whiteout exists");
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), 0);
    assert!(!sandbox.dest().join("etc/.wh.passwd").exists());
    assert_eq!(stats.entries, 2);
}

#[test]
fn opaque_dir_gets_trusted_overlay_xattr() {
    if !root_or_skip("opaque_dir_gets_trusted_overlay_xattr") {
        return;
    }
    let sandbox = Sandbox::new();
    let layer = Layer::new().dir("usr/").file("usr/.wh..wh..opq", b"").file("usr/kept", b"k").bytes();

    sandbox.apply(&layer).expect("applying the layer");

    assert_eq!(xattr(&sandbox.dest().join("usr"), OVERLAY_OPAQUE_XATTR).as_deref(), Some(&b"y"[..]));
    assert!(!sandbox.dest().join("usr/.wh..wh..opq").exists());
    assert!(sandbox.dest().join("usr/kept").exists());
}

#[test]
fn aufs_metadata_entries_are_ignored() {
    if !root_or_skip("aufs_metadata_entries_are_ignored") {
        return;
    }
    let sandbox = Sandbox::new();
    let layer = Layer::new()
        .dir(".wh..wh.plnk/")
        .file(".wh..wh.plnk/12345", b"x")
        .file(".wh..wh.aufs", b"")
        .file("kept", b"k")
        .bytes();

    let stats = sandbox.apply(&layer).expect("applying the layer");

    assert_eq!(describe_tree(&sandbox.dest(), false).len(), 1);
    assert_eq!(stats.entries, 1);
}

#[test]
fn hardlink_within_layer_shares_inode() {
    if !root_or_skip("hardlink_within_layer_shares_inode") {
        return;
    }
    let sandbox = Sandbox::new();
    let layer = Layer::new().file("bin/busybox", b"elf").hardlink("bin/sh", "bin/busybox").bytes();

    let stats = sandbox.apply(&layer).expect("applying the layer");

    let a = fs::symlink_metadata(sandbox.dest().join("bin/busybox")).expect("target exists");
    let b = fs::symlink_metadata(sandbox.dest().join("bin/sh")).expect("link exists");
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    assert_eq!(stats.bytes, 3, "a hardlink adds no bytes");
}

#[test]
fn symlink_parent_pointing_outside_is_not_followed() {
    if !root_or_skip("symlink_parent_pointing_outside_is_not_followed") {
        return;
    }
    for target in ["ABSOLUTE", "../outside", "../../../../../../.."] {
        let sandbox = Sandbox::new();
        let outside = sandbox.outside().to_string_lossy().into_owned();
        let target = if target == "ABSOLUTE" { outside.as_str() } else { target };
        let layer = Layer::new().symlink("a", target).file("a/secret", b"pwned").file("a/new", b"pwned").bytes();

        let reason = rejection(sandbox.apply(&layer));

        assert_eq!(reason, Rejection::SymlinkInPath { component: "a".to_owned() }, "target {target}");
        sandbox.assert_outside_untouched();
    }
}

#[test]
fn dotdot_breakout_is_refused_and_nothing_is_written_outside() {
    if !root_or_skip("dotdot_breakout_is_refused_and_nothing_is_written_outside") {
        return;
    }
    for name in ["../outside/pwned", "a/../../outside/secret", "./../outside", "a/b/../../../x"] {
        let sandbox = Sandbox::new();
        let layer = Layer::new().file(name, b"pwned").bytes();

        let err = sandbox.apply(&layer).expect_err("a breakout must fail");

        assert!(err.to_string().contains("breakout"), "{name}: {err}");
        assert!(err.to_string().contains(name), "error names the path: {err}");
        assert!(err.is_invalid_layer());
        sandbox.assert_outside_untouched();
    }
}

#[test]
fn dotdot_that_stays_inside_is_cleaned() {
    if !root_or_skip("dotdot_that_stays_inside_is_cleaned") {
        return;
    }
    let sandbox = Sandbox::new();
    let layer = Layer::new().file("a/b/../c", b"c").bytes();

    sandbox.apply(&layer).expect("applying the layer");

    assert!(sandbox.dest().join("a/c").is_file());
    assert!(!sandbox.dest().join("a/b").exists());
}

#[test]
fn hardlink_to_outside_is_refused() {
    if !root_or_skip("hardlink_to_outside_is_refused") {
        return;
    }
    let sandbox = Sandbox::new();
    let layer = Layer::new().hardlink("l", "../outside/secret").bytes();
    let reason = rejection(sandbox.apply(&layer));
    assert_eq!(reason, Rejection::LinkTargetBreakout { target: "../outside/secret".to_owned() });

    // An absolute target is inside the layer, where nothing by that name
    // was extracted.
    let absolute = sandbox.outside().join("secret").to_string_lossy().into_owned();
    let layer = Layer::new().hardlink("l", &absolute).bytes();
    assert!(sandbox.apply(&layer).is_err());

    // Through a symlink created earlier in the layer.
    let outside = sandbox.outside().to_string_lossy().into_owned();
    let layer = Layer::new().symlink("s", &outside).hardlink("l", "s/secret").bytes();
    let reason = rejection(sandbox.apply(&layer));
    assert_eq!(reason, Rejection::SymlinkInPath { component: "s".to_owned() });

    assert_eq!(fs::metadata(sandbox.outside().join("secret")).expect("secret exists").nlink(), 1);
    sandbox.assert_outside_untouched();
}

#[test]
fn whiteout_through_symlinked_parent_stays_inside() {
    if !root_or_skip("whiteout_through_symlinked_parent_stays_inside") {
        return;
    }
    let sandbox = Sandbox::new();
    let outside = sandbox.outside().to_string_lossy().into_owned();
    let layer = Layer::new().symlink("a", &outside).file("a/.wh.secret", b"").bytes();

    let reason = rejection(sandbox.apply(&layer));

    assert_eq!(reason, Rejection::SymlinkInPath { component: "a".to_owned() });
    assert!(fs::symlink_metadata(sandbox.outside().join("secret")).expect("secret exists").is_file());
    sandbox.assert_outside_untouched();
}

#[test]
fn opaque_marker_through_symlinked_parent_stays_inside() {
    if !root_or_skip("opaque_marker_through_symlinked_parent_stays_inside") {
        return;
    }
    let sandbox = Sandbox::new();
    let outside = sandbox.outside().to_string_lossy().into_owned();
    let layer = Layer::new().symlink("a", &outside).file("a/.wh..wh..opq", b"").bytes();

    let reason = rejection(sandbox.apply(&layer));

    assert_eq!(reason, Rejection::SymlinkInPath { component: "a".to_owned() });
    assert_eq!(xattr(&sandbox.outside(), OVERLAY_OPAQUE_XATTR), None);
    sandbox.assert_outside_untouched();
}

#[test]
fn absolute_path_lands_inside_dest() {
    if !root_or_skip("absolute_path_lands_inside_dest") {
        return;
    }
    let sandbox = Sandbox::new();
    let outside_secret = sandbox.outside().join("secret").to_string_lossy().into_owned();
    let layer = Layer::new().file("/etc/hostname", b"berth").file(&outside_secret, b"pwned").bytes();

    sandbox.apply(&layer).expect("applying the layer");

    assert_eq!(fs::read(sandbox.dest().join("etc/hostname")).expect("file inside dest"), b"berth");
    let nested = sandbox.dest().join(outside_secret.trim_start_matches('/'));
    assert_eq!(fs::read(nested).expect("absolute path re-rooted under dest"), b"pwned");
    sandbox.assert_outside_untouched();
}

#[test]
fn symlink_target_is_stored_verbatim() {
    if !root_or_skip("symlink_target_is_stored_verbatim") {
        return;
    }
    let sandbox = Sandbox::new();
    let layer = Layer::new().symlink("up", "../../../../etc/shadow").symlink("abs", "/etc/shadow").bytes();

    sandbox.apply(&layer).expect("applying the layer");

    assert_eq!(fs::read_link(sandbox.dest().join("up")).expect("symlink"), Path::new("../../../../etc/shadow"));
    assert_eq!(fs::read_link(sandbox.dest().join("abs")).expect("symlink"), Path::new("/etc/shadow"));
}

#[test]
fn regular_file_replaces_earlier_symlink_instead_of_writing_through_it() {
    if !root_or_skip("regular_file_replaces_earlier_symlink_instead_of_writing_through_it") {
        return;
    }
    let sandbox = Sandbox::new();
    let secret = sandbox.outside().join("secret").to_string_lossy().into_owned();
    let layer = Layer::new()
        .symlink("a", &secret)
        .file("a", b"new")
        .symlink("d", &sandbox.outside().to_string_lossy())
        .dir("d/")
        .bytes();

    sandbox.apply(&layer).expect("applying the layer");

    assert_eq!(fs::read(sandbox.dest().join("a")).expect("regular file"), b"new");
    assert!(fs::symlink_metadata(sandbox.dest().join("d")).expect("dir").is_dir());
    sandbox.assert_outside_untouched();
}

#[test]
fn later_entries_replace_earlier_ones_of_another_type() {
    if !root_or_skip("later_entries_replace_earlier_ones_of_another_type") {
        return;
    }
    let sandbox = Sandbox::new();
    let layer = Layer::new()
        .file("x/inner", b"1")
        .file("x", b"file now")
        .file("y", b"file")
        .dir("y/")
        .file("y/inner", b"2")
        .dir("z/")
        .file("z/kept", b"3")
        .entry(EntryType::Directory, "z/", "", 0o700, b"")
        .bytes();

    sandbox.apply(&layer).expect("applying the layer");

    assert_eq!(fs::read(sandbox.dest().join("x")).expect("x is a file"), b"file now");
    assert_eq!(fs::read(sandbox.dest().join("y/inner")).expect("y is a dir"), b"2");
    assert_eq!(fs::read(sandbox.dest().join("z/kept")).expect("z kept its contents"), b"3");
    let z_mode = fs::metadata(sandbox.dest().join("z")).expect("z").permissions().mode() & 0o7777;
    assert_eq!(z_mode, 0o700, "a directory over a directory updates its metadata");
}

#[test]
fn setuid_bit_survives_chown() {
    if !root_or_skip("setuid_bit_survives_chown") {
        return;
    }
    let sandbox = Sandbox::new();
    let layer = Layer::new()
        .entry_owned(EntryType::Regular, "usr/bin/passwd", "", 0o4755, (1000, 1001), b"elf")
        .entry_owned(EntryType::Directory, "shared/", "", 0o3775, (1000, 1001), b"")
        .bytes();

    sandbox.apply(&layer).expect("applying the layer");

    let file = fs::symlink_metadata(sandbox.dest().join("usr/bin/passwd")).expect("file");
    assert_eq!((file.uid(), file.gid(), file.mode() & 0o7777), (1000, 1001, 0o4755));
    let dir = fs::symlink_metadata(sandbox.dest().join("shared")).expect("dir");
    assert_eq!((dir.uid(), dir.gid(), dir.mode() & 0o7777), (1000, 1001, 0o3775));
}

#[test]
fn device_nodes_and_fifos_are_created() {
    if !root_or_skip("device_nodes_and_fifos_are_created") {
        return;
    }
    let sandbox = Sandbox::new();
    let layer = Layer::new()
        .device(EntryType::Char, "dev/null", 1, 3)
        .device(EntryType::Block, "dev/loop0", 7, 0)
        .device(EntryType::Fifo, "run/initctl", 0, 0)
        .bytes();

    sandbox.apply(&layer).expect("applying the layer");

    let null = fs::symlink_metadata(sandbox.dest().join("dev/null")).expect("char device");
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
    assert_eq!(null.mode() & 0o7777, 0o640);
    let lo = fs::symlink_metadata(sandbox.dest().join("dev/loop0")).expect("block device");
    assert!(lo.file_type().is_block_device());
    assert_eq!(lo.rdev(), rustix::fs::makedev(7, 0));
    assert!(fs::symlink_metadata(sandbox.dest().join("run/initctl")).expect("fifo").file_type().is_fifo());
}

#[test]
fn pax_xattrs_are_applied_and_overlay_xattrs_dropped() {
    if !root_or_skip("pax_xattrs_are_applied_and_overlay_xattrs_dropped") {
        return;
    }
    let sandbox = Sandbox::new();
    let layer = Layer::new()
        .pax(&[
            ("SCHILY.xattr.user.origin", b"berth"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ])
        .dir("d/")
        .pax(&[("SCHILY.xattr.trusted.berth", b"on-a-symlink")])
        .symlink("link", "d")
        .bytes();

    sandbox.apply(&layer).expect("applying the layer");

    let d = sandbox.dest().join("d");
    assert_eq!(xattr(&d, "user.origin").as_deref(), Some(&b"berth"[..]));
    assert_eq!(xattr(&d, "trusted.overlay.redirect"), None);
    assert_eq!(xattr(&d, OVERLAY_OPAQUE_XATTR), None);
    assert_eq!(xattr(&sandbox.dest().join("link"), "trusted.berth").as_deref(), Some(&b"on-a-symlink"[..]));
}

#[test]
fn long_gnu_and_pax_names_are_unpacked() {
    if !root_or_skip("long_gnu_and_pax_names_are_unpacked") {
        return;
    }
    let sandbox = Sandbox::new();
    let gnu_name = format!("gnu/{}/file", "g".repeat(150));
    let pax_name = format!("pax/{}/file", "p".repeat(150));
    let pax_link = format!("/{}", "t".repeat(200));
    let mut layer = Layer::new();
    let mut header = Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    header.set_entry_type(EntryType::Regular);
    layer.builder.append_data(&mut header, &gnu_name, &b"gnu"[..]).expect("tar uses a GNU long name");
    layer.pax(&[("path", pax_name.as_bytes())]).file("short-name-in-header", b"pax");
    layer.pax(&[("linkpath", pax_link.as_bytes())]).symlink("link", "short");
    let layer = layer.bytes();

    sandbox.apply(&layer).expect("applying the layer");

    assert_eq!(fs::read(sandbox.dest().join(&gnu_name)).expect("GNU long name"), b"gnu");
    assert_eq!(fs::read(sandbox.dest().join(&pax_name)).expect("PAX path"), b"pax");
    assert_eq!(fs::read_link(sandbox.dest().join("link")).expect("PAX linkpath"), Path::new(&pax_link));
    assert!(!sandbox.dest().join("short-name-in-header").exists());
}

#[test]
fn directory_mtime_is_set_after_its_contents() {
    if !root_or_skip("directory_mtime_is_set_after_its_contents") {
        return;
    }
    let sandbox = Sandbox::new();
    let layer =
        Layer::new().pax(&[("mtime", b"1000000.5")]).dir("d/").file("d/f", b"f").file("d/.wh.gone", b"").bytes();

    sandbox.apply(&layer).expect("applying the layer");

    let md = fs::symlink_metadata(sandbox.dest().join("d")).expect("dir");
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_000_000, 500_000_000));
    let f = fs::symlink_metadata(sandbox.dest().join("d/f")).expect("file");
    assert_eq!(f.mtime(), 1_600_000_000);
}

#[test]
fn zero_runs_are_written_as_holes() {
    if !root_or_skip("zero_runs_are_written_as_holes") {
        return;
    }
    let sandbox = Sandbox::new();
    let mut contents = vec![0u8; 8 << 20];
    contents[4 << 20] = 1;
    let layer = Layer::new().file("sparse", &contents).bytes();

    let stats = sandbox.apply(&layer).expect("applying the layer");

    let md = fs::metadata(sandbox.dest().join("sparse")).expect("file");
    assert_eq!(md.len(), 8 << 20);
    assert!(md.blocks() * 512 < 1 << 20, "only the non-zero chunk is allocated: {} blocks", md.blocks());
    assert_eq!(fs::read(sandbox.dest().join("sparse")).expect("file"), contents);
    assert_eq!(stats.bytes, 8 << 20);
}

#[test]
fn truncated_layer_is_an_error() {
    if !root_or_skip("truncated_layer_is_an_error") {
        return;
    }
    let sandbox = Sandbox::new();
    let layer = Layer::new().file("f", &[7u8; 4096]).bytes();

    let err = sandbox.apply(&layer[..512 + 1000]).expect_err("a truncated layer must fail");

    assert!(err.is_invalid_layer(), "{err:?}");
}

#[test]
fn apply_reads_the_stream_past_the_end_marker() {
    if !root_or_skip("apply_reads_the_stream_past_the_end_marker") {
        return;
    }
    let sandbox = Sandbox::new();
    let mut layer = Layer::new().file("f", b"f").bytes();
    layer.resize(10240, 0);
    let mut reader = std::io::Cursor::new(layer);

    apply_layer(&mut reader, &sandbox.dest(), &owners()).expect("applying the layer");

    assert_eq!(reader.position(), 10240, "padding after the end marker is consumed");
}

/// `hello.txt` ("hello from zstd\n") in a ustar tar, compressed with
/// `zstd -19`: ruzstd only decodes, so the test data is made once here.
const HELLO_TAR_ZST: [u8; 89] = [
    0x28, 0xb5, 0x2f, 0xfd, 0x64, 0x00, 0x27, 0x5d, 0x02, 0x00, 0x22, 0x43, 0x0b, 0x11, 0xa0, 0xed, 0x70, 0xe8, 0xbf,
    0xfd, 0x4e, 0xaa, 0x3a, 0xb8, 0x22, 0x52, 0xc6, 0x9f, 0x99, 0x9b, 0x02, 0x06, 0x68, 0xe1, 0xd4, 0xe6, 0x9e, 0x52,
    0xff, 0x7e, 0x67, 0x61, 0xb4, 0xaf, 0x16, 0x2f, 0xe6, 0xe3, 0xbf, 0x09, 0x29, 0xf7, 0xca, 0x0d, 0x8e, 0xb1, 0xb4,
    0x02, 0x0a, 0x20, 0x20, 0x31, 0xb4, 0x3b, 0xec, 0xc5, 0x78, 0x0e, 0x20, 0x80, 0x79, 0xd4, 0xf9, 0xe7, 0x64, 0xef,
    0x31, 0x46, 0x04, 0x0c, 0x1a, 0x60, 0x37, 0x99, 0x2e, 0xdb, 0x1d, 0x23, 0x18,
];

fn read_all(stream: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::new();
    decompressed(std::io::Cursor::new(stream)).expect("sniffing").read_to_end(&mut out).expect("decompressing");
    out
}

fn tar_files(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(tar);
    let mut out = Vec::new();
    for entry in archive.entries().expect("a tar") {
        let mut entry = entry.expect("an entry");
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut contents = Vec::new();
        entry.read_to_end(&mut contents).expect("entry contents");
        out.push((name, contents));
    }
    out
}

#[test]
fn gzip_and_zstd_layers_are_detected() {
    let plain = Layer::new().file("hello.txt", b"hello from gzip\n").bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).expect("gzip to a Vec");
    let gz = gz.finish().expect("gzip to a Vec");

    assert_eq!(read_all(plain.clone()), plain, "plain tars pass through");
    assert_eq!(read_all(gz), plain);
    let zst = read_all(HELLO_TAR_ZST.to_vec());
    assert_eq!(tar_files(&zst), vec![("hello.txt".to_owned(), b"hello from zstd\n".to_vec())]);
    assert!(read_all(Vec::new()).is_empty(), "an empty stream is an empty tar");
}

#[test]
fn concatenated_zstd_frames_and_skippable_frames_are_decoded() {
    let single = read_all(HELLO_TAR_ZST.to_vec());
    let mut stream = HELLO_TAR_ZST.to_vec();
    stream.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18, 3, 0, 0, 0, 0xaa, 0xbb, 0xcc]);
    stream.extend_from_slice(&HELLO_TAR_ZST);

    let both = read_all(stream);

    assert_eq!(both, [single.clone(), single].concat());
}

#[test]
fn corrupt_zstd_is_a_read_error() {
    let mut stream = HELLO_TAR_ZST.to_vec();
    stream.truncate(40);
    let mut out = Vec::new();

    let result = decompressed(std::io::Cursor::new(stream)).expect("sniffing").read_to_end(&mut out);

    assert!(result.is_err());
}

#[test]
fn pack_then_unpack_roundtrips_tree() {
    if !root_or_skip("pack_then_unpack_roundtrips_tree") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    let dst = tmp.path().join("dst");
    fs::create_dir(&src).expect("src");
    fs::create_dir(&dst).expect("dst");
    let long_dir = src.join("l".repeat(120));
    fs::create_dir_all(src.join("etc/empty")).expect("dirs");
    fs::create_dir_all(&long_dir).expect("long dir");
    fs::create_dir_all(src.join("opq")).expect("opaque dir");
    fs::write(src.join("opq/new"), b"new").expect("file");
    fs::write(src.join("etc/passwd"), b"root:x:0:0\n").expect("file");
    fs::write(long_dir.join("m".repeat(120)), b"long").expect("long file");
    fs::write(src.join("suid"), b"elf").expect("file");
    std::os::unix::fs::chown(src.join("suid"), Some(1234), Some(5678)).expect("chown");
    fs::set_permissions(src.join("suid"), fs::Permissions::from_mode(0o4750)).expect("chmod");
    fs::hard_link(src.join("etc/passwd"), src.join("etc/passwd-")).expect("hardlink");
    std::os::unix::fs::symlink("../etc/passwd", src.join("opq/link")).expect("symlink");
    std::os::unix::fs::symlink("t".repeat(150), src.join("longlink")).expect("symlink");
    let src_fd =
        rustix::fs::open(&src, rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY, rustix::fs::Mode::empty())
            .expect("opening src");
    let mode = rustix::fs::Mode::from_raw_mode;
    rustix::fs::mknodat(&src_fd, "null", rustix::fs::FileType::CharacterDevice, mode(0o666), rustix::fs::makedev(1, 3))
        .expect("mknod");
    rustix::fs::mknodat(&src_fd, "fifo", rustix::fs::FileType::Fifo, mode(0o600), 0).expect("mkfifo");
    rustix::fs::mknodat(&src_fd, "gone", rustix::fs::FileType::CharacterDevice, mode(0), 0).expect("whiteout");
    rustix::fs::setxattr(src.join("opq"), OVERLAY_OPAQUE_XATTR, b"y", rustix::fs::XattrFlags::empty())
        .expect("opaque xattr");
    rustix::fs::setxattr(src.join("etc/passwd"), "user.tag", b"v", rustix::fs::XattrFlags::empty()).expect("xattr");
    rustix::fs::lsetxattr(src.join("opq/link"), "trusted.tag", b"s", rustix::fs::XattrFlags::empty()).expect("xattr");
    let mut tar = Vec::new();

    write_tar_of_dir(&src, &mut tar, &PackOptions { overlay_whiteouts: true }).expect("packing");
    let names: Vec<String> = tar_files(&tar).into_iter().map(|(name, _)| name).collect();
    let stats = apply_layer(&tar[..], &dst, &owners()).expect("unpacking");

    assert!(names.contains(&".wh.gone".to_owned()), "{names:?}");
    assert!(names.contains(&"opq/.wh..wh..opq".to_owned()), "{names:?}");
    assert_eq!(describe_tree(&dst, true), describe_tree(&src, true));
    assert_eq!(stats.bytes, 11 + 4 + 3 + 3);
}

#[test]
fn packing_is_deterministic() {
    if !root_or_skip("packing_is_deterministic") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    for name in ["b", "a", "c/z", "c/y"] {
        let path = tmp.path().join(name);
        fs::create_dir_all(path.parent().expect("has a parent")).expect("dirs");
        fs::write(&path, name).expect("file");
    }
    let pack = || {
        let mut tar = Vec::new();
        write_tar_of_dir(tmp.path(), &mut tar, &PackOptions::default()).expect("packing");
        tar
    };

    let first = pack();

    let names: Vec<String> = tar_files(&first).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["a", "b", "c/", "c/y", "c/z"]);
    assert_eq!(pack(), first);
}

#[test]
fn pack_never_follows_symlinks() {
    if !root_or_skip("pack_never_follows_symlinks") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).expect("tree");
    std::os::unix::fs::symlink("/etc", tree.join("etc")).expect("symlink");
    let mut tar = Vec::new();

    write_tar_of_dir(&tree, &mut tar, &PackOptions::default()).expect("packing");

    let mut archive = tar::Archive::new(&tar[..]);
    let entries: Vec<(String, EntryType)> = archive
        .entries()
        .expect("a tar")
        .map(|e| {
            let e = e.expect("an entry");
            (String::from_utf8_lossy(&e.path_bytes()).into_owned(), e.header().entry_type())
        })
        .collect();
    assert_eq!(entries, vec![("etc".to_owned(), EntryType::Symlink)]);
}

/// A fixed xorshift64 generator: the mutation test must be reproducible.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A layer with one of every kind of entry, hostile ones included.
fn assorted_layer(outside: &str) -> Vec<u8> {
    Layer::new()
        .dir("etc/")
        .file("etc/passwd", b"root:x:0:0\n")
        .hardlink("etc/passwd-", "etc/passwd")
        .symlink("escape", outside)
        .symlink("up", "../../..")
        .file("etc/.wh.shadow", b"")
        .file("etc/.wh..wh..opq", b"")
        .device(EntryType::Fifo, "run/fifo", 0, 0)
        .device(EntryType::Char, "dev/null", 1, 3)
        .pax(&[("SCHILY.xattr.user.k", b"v"), ("path", b"usr/lib/pax-named")])
        .file("placeholder", b"pax")
        .entry_owned(EntryType::Regular, "bin/su", "", 0o4755, (0, 0), b"elf")
        .file("a/b/../c", b"c")
        .bytes()
}

#[test]
fn random_mutations_never_escape_dest() {
    if !root_or_skip("random_mutations_never_escape_dest") {
        return;
    }
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let interesting = [b'/', b'.', b'0', b'7', 0, b'1', b'2', b'3', b'5', b'L', b'x', b'S', b'K', 0xff];
    let (mut applied, mut refused) = (0, 0);
    for round in 0..300 {
        let sandbox = Sandbox::new();
        let outside = sandbox.outside().to_string_lossy().into_owned();
        let mut layer = assorted_layer(&outside);
        let headers: Vec<usize> = (0..layer.len() / 512).filter(|b| is_header(&layer[b * 512..][..512])).collect();
        for _ in 0..1 + rng.below(6) {
            // Mostly header fields (names, modes, sizes, type flags), whose
            // checksum is then fixed so the tar reader gets past it.
            let block =
                if rng.below(4) == 0 { rng.below(layer.len() / 512) } else { headers[rng.below(headers.len())] };
            let offset = if rng.below(4) == 0 { rng.below(512) } else { rng.below(160) };
            let at = block * 512 + offset;
            layer[at] = match rng.below(3) {
                0 => interesting[rng.below(interesting.len())],
                1 => layer[at] ^ (1 << rng.below(8)),
                _ => rng.next() as u8,
            };
            if headers.contains(&block) && rng.below(10) != 0 {
                fix_checksum(&mut layer[block * 512..][..512]);
            }
        }

        let result = sandbox.apply(&layer);

        sandbox.assert_outside_untouched();
        match result {
            Ok(_) => applied += 1,
            Err(err) => {
                assert!(!err.to_string().is_empty(), "round {round}");
                refused += 1;
            }
        }
    }
    // The mutations must reach the unpacker, not only the checksum test.
    assert!(applied > 30 && refused > 30, "{applied} applied, {refused} refused");
}

fn header_checksum(block: &[u8]) -> u32 {
    block.iter().enumerate().map(|(i, b)| if (148..156).contains(&i) { u32::from(b' ') } else { u32::from(*b) }).sum()
}

fn is_header(block: &[u8]) -> bool {
    let field = std::str::from_utf8(&block[148..156]).ok();
    let recorded = field.and_then(|s| u32::from_str_radix(s.trim_matches(|c| c == '\0' || c == ' '), 8).ok());
    block.iter().any(|b| *b != 0) && recorded == Some(header_checksum(block))
}

fn fix_checksum(block: &mut [u8]) {
    let sum = format!("{:06o}\0 ", header_checksum(block));
    block[148..156].copy_from_slice(sum.as_bytes());
}

#[test]
fn unmutated_assorted_layer_applies() {
    if !root_or_skip("unmutated_assorted_layer_applies") {
        return;
    }
    let sandbox = Sandbox::new();
    let layer = assorted_layer(&sandbox.outside().to_string_lossy());

    let stats = sandbox.apply(&layer).expect("applying the layer");

    assert_eq!(stats.entries, 12);
    assert_eq!(fs::read(sandbox.dest().join("usr/lib/pax-named")).expect("pax file"), b"pax");
}
