//! Arbitrary bytes through layer decompression and unpacking: whatever the
//! input, `apply_layer` may fail but must not panic, and must leave
//! everything outside its destination as it was.

#![no_main]

use std::fs;
use std::io::Cursor;
use std::path::Path;

use berth_engine::archive::{apply_layer, decompressed, ApplyOptions};
use libfuzzer_sys::fuzz_target;

const CANARY: &[u8] = b"untouched";

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("creating a tempdir");
    let dest = tmp.path().join("dest");
    let outside = tmp.path().join("outside");
    fs::create_dir(&dest).expect("creating dest");
    fs::create_dir(&outside).expect("creating outside");
    fs::write(outside.join("canary"), CANARY).expect("writing the canary");

    if let Ok(layer) = decompressed(Cursor::new(data.to_vec())) {
        let _ = apply_layer(layer, &dest, &ApplyOptions::default());
    }

    assert_eq!(names(tmp.path()), ["dest", "outside"], "an entry appeared next to dest");
    assert_eq!(names(&outside), ["canary"], "an entry appeared in outside");
    let canary = fs::symlink_metadata(outside.join("canary")).expect("stat of the canary");
    assert!(canary.file_type().is_file(), "the canary was replaced");
    assert_eq!(fs::read(outside.join("canary")).expect("reading the canary"), CANARY);
});

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("listing a directory")
        .map(|e| e.expect("reading a directory entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
