//! `hangar-image`: builds Hangar's built-in guest images.
//!
//! Exit codes: 0 ok, 1 the build failed, 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hangar_image::minimal::{build_minimal, MinimalInputs};

/// Build Hangar's built-in guest images.
#[derive(Debug, Parser)]
#[command(name = "hangar-image", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build the `minimal` image: vmlinuz, initrd.img and manifest.json in --out.
    ///
    /// The initramfs holds /init (hangar-init), /bin/busybox with its applet links, and the
    /// virtio, ACPI-button and evdev kernel modules. Same inputs give byte-identical files;
    /// if --out already holds exactly this image nothing is written, otherwise the directory
    /// is replaced atomically.
    Build {
        /// Root of the unpacked kernel package (`dpkg-deb -x linux-image-…-cloud-amd64.deb
        /// DIR`): must contain boot/vmlinuz-<release> and lib/modules/<release>/.
        #[arg(long, value_name = "DIR")]
        kernel_root: PathBuf,
        /// A statically linked busybox (Debian: /bin/busybox from busybox-static).
        #[arg(long, value_name = "PATH")]
        busybox: PathBuf,
        /// The statically linked hangar-init binary, installed as /init.
        #[arg(long, value_name = "PATH")]
        init: PathBuf,
        /// The image directory to create or replace (e.g. /usr/local/share/hangar/images/minimal).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS // --help, --version
            };
        }
    };
    match cli.command {
        Command::Build { kernel_root, busybox, init, out } => {
            let inputs = MinimalInputs { kernel_root, busybox, init, out_dir: out };
            match build_minimal(&inputs) {
                Ok(report) => {
                    let m = &report.manifest;
                    let verb = if report.changed { "built" } else { "unchanged:" };
                    println!(
                        "{verb} {} image in {} (kernel {}, vmlinuz {} bytes, initrd.img {} bytes, sha256 {})",
                        m.image,
                        inputs.out_dir.display(),
                        m.kernel_release,
                        m.files.vmlinuz.size,
                        m.files.initrd.size,
                        m.files.initrd.sha256,
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}
