//! The initramfs: an uncompressed newc cpio holding `/init`, busybox and its applets, the
//! kernel modules and their load order. Pure: the same arguments give the same bytes.

use super::contents::{APPLETS, MODULE_LIST_PATH};
use crate::cpio::CpioWriter;
use crate::ImageError;

/// The contents of the module list file: one path per line, in load order.
pub fn module_list_text(modules: &[&str]) -> String {
    let mut text = String::from("# Kernel modules loaded by hangar-init, in this order.\n");
    for m in modules {
        text.push_str(m);
        text.push('\n');
    }
    text
}

/// Assembles the `minimal` initramfs (pure: same arguments, same bytes).
///
/// `modules` pairs each path of [`MODULES`](super::MODULES) with its contents.
pub fn initrd_bytes(
    release: &str, init: &[u8], busybox: &[u8], modules: &[(&str, Vec<u8>)],
) -> Result<Vec<u8>, ImageError> {
    let mut w = CpioWriter::new(Vec::new());
    w.dir("dev", 0o755)?;
    // The kernel opens /dev/console as PID 1's stdio before /init runs.
    w.char_device("dev/console", 0o600, 5, 1)?;
    w.dir("proc", 0o555)?;
    w.dir("sys", 0o555)?;
    w.dir("tmp", 0o1777)?;
    w.dir("root", 0o700)?;
    w.dir("etc", 0o755)?;
    let list: Vec<&str> = modules.iter().map(|(p, _)| *p).collect();
    w.file(MODULE_LIST_PATH, 0o644, module_list_text(&list).as_bytes())?;
    w.file("init", 0o755, init)?;
    w.file("bin/busybox", 0o755, busybox)?;
    for applet in APPLETS {
        w.symlink(&format!("bin/{applet}"), "busybox")?;
    }
    for (path, data) in modules {
        w.file(&format!("lib/modules/{release}/{path}"), 0o644, data)?;
    }
    Ok(w.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minimal::tests::RELEASE;
    use crate::minimal::MODULES;

    #[test]
    fn initrd_contains_the_expected_entries() {
        let modules: Vec<(&str, Vec<u8>)> = MODULES.iter().map(|m| (*m, vec![1, 2, 3])).collect();
        let bytes = initrd_bytes(RELEASE, b"INIT", b"BUSYBOX", &modules).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for needle in [
            "dev/console\0",
            "init\0",
            "bin/busybox\0",
            "bin/sh\0",
            "bin/poweroff\0",
            "etc/hangar/modules\0",
            "lib/modules/6.1.0-99-cloud-amd64/kernel/drivers/char/hw_random/virtio-rng.ko\0",
            "lib/modules/6.1.0-99-cloud-amd64/kernel/drivers/input/evdev.ko\0",
            "TRAILER!!!\0",
        ] {
            assert!(text.contains(needle), "missing {needle:?}");
        }
        for applet in ["sh", "ls", "cat", "echo", "mount", "uname", "sleep", "poweroff"] {
            assert!(APPLETS.contains(&applet), "{applet}");
        }
        assert_eq!(bytes, initrd_bytes(RELEASE, b"INIT", b"BUSYBOX", &modules).unwrap());
    }
}
