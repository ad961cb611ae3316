//! Reproducible guest images for Hangar.
//!
//! - [`cpio`]: a deterministic `newc` cpio writer (the initramfs format).
//! - [`minimal`]: the built-in `minimal` image — Debian's cloud kernel, a static busybox and
//!   `hangar-init` as PID 1 — built by [`minimal::build_minimal`] into `vmlinuz`,
//!   `initrd.img` and `manifest.json`. The same inputs give byte-identical outputs, and the
//!   output directory is replaced atomically.

use std::path::PathBuf;

pub mod cpio;
pub mod minimal;

/// Everything that can go wrong while building an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A filesystem operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "rename", …).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `<kernel root>/boot` holds no `vmlinuz-<release>`.
    #[error("no kernel under {dir}: expected one vmlinuz-<release> (unpack the linux-image .deb with dpkg-deb -x)")]
    NoKernel {
        /// The `boot` directory searched.
        dir: PathBuf,
    },
    /// `<kernel root>/boot` holds several kernels; which one to use is ambiguous.
    #[error("several kernels under {dir} ({}); unpack exactly one kernel package per root", releases.join(", "))]
    SeveralKernels {
        /// The `boot` directory searched.
        dir: PathBuf,
        /// The releases found.
        releases: Vec<String>,
    },
    /// The kernel's module tree is missing.
    #[error("kernel {release}: module directory {path} does not exist")]
    MissingModulesDir {
        /// The kernel release.
        release: String,
        /// The expected directory.
        path: PathBuf,
    },
    /// A kernel module the image must ship is missing.
    #[error("kernel module {module} not found: expected the file {path}")]
    MissingModule {
        /// The module name.
        module: String,
        /// The expected file.
        path: PathBuf,
    },
    /// An executable that must run without a dynamic loader is not a static ELF binary.
    #[error("{what} {path} is not usable: {reason}")]
    NotStatic {
        /// Which input ("hangar-init", "busybox").
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// The output path exists and is not a directory.
    #[error("output {path} exists and is not a directory")]
    OutputNotDir {
        /// The output path.
        path: PathBuf,
    },
    /// Building the initramfs archive failed.
    #[error(transparent)]
    Cpio(#[from] cpio::CpioError),
}

impl ImageError {
    pub(crate) fn io(
        action: &'static str, path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ImageError::Io { action, path, source }
    }
}
