//! Shell completions and man pages, both generated from the same clap definitions as the
//! parser itself, so they cannot drift from what `hangar` accepts.

use std::io::Write;
use std::path::{Path, PathBuf};

use hangar_core::error::ErrorCode;

use crate::Failure;

/// `hangar completion SHELL`: the completion script on `out`.
pub fn completion(mut cli: clap::Command, shell: clap_complete::Shell, out: &mut dyn Write) {
    clap_complete::generate(shell, &mut cli, "hangar", out);
}

/// `hangar man --out DIR`: a page for `hangar` and one for every command below it
/// (`hangar-up.1`, `hangar-snapshot-save.1`, …); prints each file it wrote.
pub fn man_pages(mut cli: clap::Command, dir: &Path, out: &mut dyn Write) -> Result<(), Failure> {
    let io = |what: &Path, e: std::io::Error| {
        crate::failure(
            ErrorCode::Io,
            format!("{}: {e}", what.display()),
            "name a directory this user can write",
        )
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    // Building fills in each subcommand's full name (`hangar-up`) and usage (`hangar up`).
    cli.build();
    let mut pages = Vec::new();
    collect(&cli, &mut pages);
    for cmd in pages {
        let name = cmd.get_display_name().unwrap_or(cmd.get_name()).to_string();
        let path: PathBuf = dir.join(format!("{name}.1"));
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd).render(&mut page).map_err(|e| io(&path, e))?;
        // Written whole, then renamed: a reader never sees half a page.
        let partial = dir.join(format!(".{name}.1.partial"));
        std::fs::write(&partial, &page).map_err(|e| io(&partial, e))?;
        std::fs::rename(&partial, &path).map_err(|e| io(&path, e))?;
        let _ = writeln!(out, "{}", path.display());
    }
    Ok(())
}

/// `cmd` and every visible command below it, depth first.
fn collect(cmd: &clap::Command, pages: &mut Vec<clap::Command>) {
    pages.push(cmd.clone());
    for sub in cmd.get_subcommands() {
        if !sub.is_hide_set() && sub.get_name() != "help" {
            collect(sub, pages);
        }
    }
}
