//! Shell quoting, for showing an argv as a copy-pasteable command. Plans are executed as argv
//! vectors, never through a shell; this is for people only.

/// Quotes one word for a POSIX shell (single quotes, unless it needs none).
pub fn quote(word: &str) -> String {
    let safe = !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The argv as a multi-line shell command: one option (with its value) per line.
pub fn command_lines(argv: &[String]) -> String {
    let mut lines: Vec<String> = Vec::new();
    for word in argv {
        let quoted = quote(word);
        match lines.last_mut() {
            Some(last)
                if !word.starts_with('-')
                    && last.trim_start().starts_with('-')
                    && !last.contains(' ') =>
            {
                last.push(' ');
                last.push_str(&quoted);
            }
            _ => lines.push(quoted),
        }
    }
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            out.push_str(" \\\n    ");
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote("-m"), "-m");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$(rm -rf /)"), "'$(rm -rf /)'");
    }

    #[test]
    fn groups_options_with_values() {
        let argv: Vec<String> = ["qemu", "-m", "256", "-nodefaults", "-append", "a b"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            command_lines(&argv),
            "qemu \\\n    -m 256 \\\n    -nodefaults \\\n    -append 'a b'"
        );
    }
}
