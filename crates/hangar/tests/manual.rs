//! Completions and man pages cover every command: the commands are found the way a user finds
//! them (`--help`'s "Commands:" lists, recursively), not from the definitions the generators
//! read, so a command the generators missed would show here.

use std::path::Path;
use std::process::Command;

fn hangar(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hangar")).args(args).output().unwrap();
    assert!(out.status.success(), "hangar {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The subcommands `hangar <path> --help` lists, without `help`.
fn subcommands(path: &[String]) -> Vec<String> {
    let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
    args.push("--help");
    let help = hangar(&args);
    let Some((_, listed)) = help.split_once("\nCommands:\n") else { return vec![] };
    listed
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// Every command path (`[]`, `["up"]`, `["snapshot", "save"]`, …).
fn every_command() -> Vec<Vec<String>> {
    let mut all = vec![vec![]];
    let mut i = 0;
    while i < all.len() {
        let path = all[i].clone();
        for sub in subcommands(&path) {
            let mut child = path.clone();
            child.push(sub);
            all.push(child);
        }
        i += 1;
    }
    all
}

fn page_name(path: &[String]) -> String {
    std::iter::once("hangar").chain(path.iter().map(String::as_str)).collect::<Vec<_>>().join("-")
}

#[test]
fn every_command_has_a_man_page_that_man_renders() {
    let commands = every_command();
    assert!(commands.len() > 40, "only {} commands found: {commands:?}", commands.len());
    let dir = tempfile::tempdir().unwrap();
    let written = hangar(&["man", "--out", &dir.path().display().to_string()]);
    let mut expected: Vec<String> = commands
        .iter()
        .map(|p| dir.path().join(format!("{}.1", page_name(p))).display().to_string())
        .collect();
    let mut got: Vec<String> = written.lines().map(str::to_string).collect();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "the pages written, against the commands --help shows");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, expected, "nothing else is left in the directory");

    if !Path::new("/usr/bin/man").exists() {
        eprintln!(
            "SKIPPED rendering the pages: man is not installed (scripts/setup installs man-db)"
        );
        return;
    }
    for path in &commands {
        let name = page_name(path);
        let file = dir.path().join(format!("{name}.1"));
        let out = Command::new("man").arg("-l").arg(&file).env("MANWIDTH", "200").output().unwrap();
        assert!(
            out.status.success(),
            "man -l {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        // The page's NAME section names it, with the first line of the command's own help.
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let about = hangar(&args).lines().next().unwrap().to_string();
        let first_words: String = about.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(flat.contains(&format!("{name} - {first_words}")), "{name}: {flat:.400}");
        assert!(flat.contains("SYNOPSIS"), "{name}: {flat:.400}");
    }
}

/// What bash offers after `hangar <path> ` (an empty word to complete).
fn bash_offers(script: &Path, path: &[String]) -> Vec<String> {
    let words: Vec<String> = std::iter::once("hangar".to_string())
        .chain(path.iter().cloned())
        .chain(std::iter::once(String::new()))
        .collect();
    let line = format!("{} ", words[..words.len() - 1].join(" "));
    let program = format!(
        "source {}\nCOMP_WORDS=({})\nCOMP_CWORD={}\nCOMP_LINE='{line}'\nCOMP_POINT={}\n_hangar hangar '' {}\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        words.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" "),
        words.len() - 1,
        line.len(),
        words[words.len() - 2],
    );
    let out = Command::new("bash").arg("--norc").arg("-c").arg(program).output().unwrap();
    assert!(out.status.success(), "bash: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

#[test]
fn bash_accepts_the_completion_and_completes_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("hangar.bash");
    std::fs::write(&script, hangar(&["completion", "bash"])).unwrap();
    let syntax = Command::new("bash").arg("-n").arg(&script).output().unwrap();
    assert!(syntax.status.success(), "bash -n: {}", String::from_utf8_lossy(&syntax.stderr));
    let mut checked = 0;
    for path in every_command() {
        let subs = subcommands(&path);
        if subs.is_empty() {
            continue;
        }
        let offered = bash_offers(&script, &path);
        for sub in &subs {
            assert!(
                offered.contains(sub),
                "`hangar {} ` does not offer {sub}: {offered:?}",
                path.join(" ")
            );
        }
        checked += 1;
    }
    assert!(checked > 5, "only {checked} commands with subcommands");
    // And options: `hangar up --` offers --no-wait.
    let offered = bash_offers(&script, &["up".to_string()]);
    assert!(offered.contains(&"--no-wait".to_string()), "{offered:?}");
}

#[test]
fn zsh_and_fish_completions_are_generated() {
    for (shell, marker) in [("zsh", "#compdef hangar"), ("fish", "complete -c hangar")] {
        let script = hangar(&["completion", shell]);
        assert!(script.contains(marker), "{shell}: {script:.200}");
        assert!(script.contains("snapshot"), "{shell} completes no subcommand");
        // Syntax-checked where the shell exists (scripts/setup installs only bash's).
        let Some(binary) =
            ["/usr/bin", "/bin"].iter().map(|d| Path::new(d).join(shell)).find(|p| p.exists())
        else {
            eprintln!("SKIPPED {shell} -n: {shell} is not installed here");
            continue;
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hangar");
        std::fs::write(&file, &script).unwrap();
        let out = Command::new(binary).arg("-n").arg(&file).output().unwrap();
        assert!(out.status.success(), "{shell} -n: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn after_setup_man_and_bash_find_hangar() {
    let test = "after_setup_man_and_bash_find_hangar";
    let page = Path::new("/usr/local/share/man/man1/hangar-up.1");
    let loader = Path::new("/usr/share/bash-completion/bash_completion");
    if !page.exists() || !loader.exists() {
        eprintln!("SKIPPED {test}: scripts/setup has not installed the man pages and bash-completion here");
        return;
    }
    let out = Command::new("man")
        .args(["-P", "cat", "hangar-up"])
        .env("MANWIDTH", "120")
        .output()
        .unwrap();
    assert!(out.status.success(), "man hangar-up: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("hangar up") && text.contains("--no-wait"), "{text:.500}");
    // bash-completion loads hangar's completion on demand, from where setup put it.
    let program =
        format!("source {}\n_completion_loader hangar\ncomplete -p hangar", loader.display());
    let out = Command::new("bash").arg("--norc").arg("-c").arg(program).output().unwrap();
    let registered = String::from_utf8_lossy(&out.stdout);
    assert!(
        registered.contains("-F _hangar") && registered.trim_end().ends_with(" hangar"),
        "{registered} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
