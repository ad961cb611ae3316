//! Packing and unpacking trees, and what a hostile archive can (not) do.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use hangar_tree::{pack, unpack, Counts};
use proptest::prelude::*;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn mtime(p: &Path) -> i64 {
    std::fs::symlink_metadata(p).unwrap().mtime()
}

fn touch(p: &Path, bytes: &[u8], m: u32, t: u64) {
    std::fs::write(p, bytes).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)).unwrap();
}

#[test]
fn a_tree_round_trips_with_modes_and_times_and_without_its_links() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    let long = "x".repeat(120);
    std::fs::create_dir_all(src.join("a/b").join(&long)).unwrap();
    std::fs::create_dir(src.join("empty")).unwrap();
    touch(&src.join("top.txt"), b"top\n", 0o640, 1_700_000_000);
    touch(&src.join("a/b/run.sh"), b"#!/bin/sh\n", 0o755, 1_600_000_000);
    touch(&src.join("a/b").join(&long).join("deep"), &[7u8; 100_000], 0o600, 1_500_000_000);
    std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
    std::fs::set_permissions(src.join("a"), std::fs::Permissions::from_mode(0o750)).unwrap();

    let mut stream = Vec::new();
    let packed = pack(&src, &mut stream).unwrap();
    assert_eq!(packed, Counts { files: 3, dirs: 5, skipped: 1, bytes: 100_014 });
    let mut again = Vec::new();
    pack(&src, &mut again).unwrap();
    assert!(stream == again, "the same tree packs to the same bytes");

    let dst = d.path().join("dst");
    let unpacked = unpack(&stream[..], &dst).unwrap();
    assert_eq!(unpacked, Counts { skipped: 0, ..packed });
    assert_eq!(std::fs::read(dst.join("top.txt")).unwrap(), b"top\n");
    assert_eq!(std::fs::read(dst.join("a/b").join(&long).join("deep")).unwrap(), [7u8; 100_000]);
    assert_eq!((mode(&dst.join("top.txt")), mtime(&dst.join("top.txt"))), (0o640, 1_700_000_000));
    assert_eq!(mode(&dst.join("a/b/run.sh")), 0o755);
    assert_eq!(mode(&dst.join("a")), 0o750);
    assert!(dst.join("empty").is_dir());
    assert!(!dst.join("link").exists(), "links are not copied");
    // Nothing beside the destination: the staging directory was renamed into place.
    let mut names: Vec<_> =
        std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["dst", "src"]);
}

/// A tar entry with a raw name (no checks) of `kind`, `bytes` as its content.
fn raw_entry(out: &mut Vec<u8>, name: &str, kind: tar::EntryType, bytes: &[u8], link: &str) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_entry_type(kind);
    h.set_mode(0o6755);
    h.set_size(bytes.len() as u64);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(bytes);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn a_hostile_archive_cannot_leave_the_destination_or_plant_links() {
    let d = tempfile::tempdir().unwrap();
    let dst = d.path().join("in/dst");
    std::fs::create_dir(d.path().join("in")).unwrap();
    for name in ["../escape", "/tmp/hangar-tree-absolute", "a/../../escape"] {
        let mut t = Vec::new();
        raw_entry(&mut t, name, tar::EntryType::Regular, b"x", "");
        let e = unpack(&finish(t)[..], &dst).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{name}: {e}");
        assert!(!d.path().join("escape").exists() && !d.path().join("in/escape").exists());
        assert!(!Path::new("/tmp/hangar-tree-absolute").exists());
        assert_eq!(std::fs::read_dir(d.path().join("in")).unwrap().count(), 0, "{name}: left");
    }
    // A symlink, then a file "through" it: the link is skipped, so the file lands in a real
    // directory of that name inside the copy. Hard links and devices are skipped too, and
    // setuid/setgid bits are dropped.
    let mut t = Vec::new();
    raw_entry(&mut t, "link", tar::EntryType::Symlink, b"", "/etc");
    raw_entry(&mut t, "link/owned", tar::EntryType::Regular, b"mine", "");
    raw_entry(&mut t, "hard", tar::EntryType::Link, b"", "/etc/shadow");
    raw_entry(&mut t, "dev", tar::EntryType::Char, b"", "");
    raw_entry(&mut t, "suid", tar::EntryType::Regular, b"#!", "");
    let counts = unpack(&finish(t)[..], &dst).unwrap();
    assert_eq!((counts.files, counts.skipped), (2, 3));
    assert!(std::fs::symlink_metadata(dst.join("link")).unwrap().is_dir());
    assert_eq!(std::fs::read(dst.join("link/owned")).unwrap(), b"mine");
    assert!(!Path::new("/etc/owned").exists());
    assert_eq!(mode(&dst.join("suid")), 0o755);
    // The destination must be new: an existing one (even empty) is refused, untouched.
    let e = unpack(&finish(Vec::new())[..], &dst).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(dst.join("link/owned")).unwrap(), b"mine");
}

#[test]
fn a_torn_archive_leaves_nothing_behind() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::File::create(src.join("f")).unwrap().write_all(&[1u8; 5000]).unwrap();
    let mut stream = Vec::new();
    pack(&src, &mut stream).unwrap();
    stream.truncate(2000);
    assert!(unpack(&stream[..], &d.path().join("dst")).is_err());
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "only src is left");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Random bytes never panic, and never put anything anywhere but the destination.
    #[test]
    fn random_bytes_are_an_error_or_a_tree_inside_the_destination(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096)
    ) {
        let d = tempfile::tempdir().unwrap();
        let dst = d.path().join("dst");
        let result = unpack(&bytes[..], &dst);
        let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        match result {
            Ok(_) => prop_assert_eq!(left, vec![std::ffi::OsString::from("dst")]),
            Err(_) => prop_assert!(left.is_empty(), "{:?}", left),
        }
    }
}
