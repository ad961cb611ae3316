//! Listings as aligned columns: every `ls`-style command prints through [`Table`], so
//! columns line up the same way everywhere (and `--output json` is the machine format).

use std::io::Write;

/// How a column's cells are padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers: padded on the left.
    Right,
}

/// A listing: fixed-width columns, then optionally one free-width column at the end (a reason,
/// an error, a list) set off by two spaces.
pub(crate) struct Table {
    columns: Vec<(&'static str, usize, Align)>,
    free: Option<&'static str>,
    rows: Vec<(Vec<String>, String)>,
}

impl Table {
    /// A table with these fixed columns, written like format specs: `TITLE<WIDTH` for text
    /// padded on the right, `TITLE>WIDTH` for numbers padded on the left, separated by spaces
    /// (`"NAME<24 STATE<9 VCPUS>5"`).
    pub(crate) fn new(columns: &'static str) -> Table {
        let columns = columns
            .split_whitespace()
            .map(|c| {
                let (at, align) = c
                    .find(['<', '>'])
                    .map(|i| (i, if &c[i..=i] == "<" { Align::Left } else { Align::Right }))
                    .unwrap_or_else(|| panic!("column {c:?} has no < or >"));
                let width =
                    c[at + 1..].parse().unwrap_or_else(|_| panic!("column {c:?} has no width"));
                (&c[..at], width, align)
            })
            .collect();
        Table { columns, free: None, rows: Vec::new() }
    }

    /// Adds the free-width last column.
    pub(crate) fn free(mut self, title: &'static str) -> Table {
        self.free = Some(title);
        self
    }

    /// Adds a row: one cell per fixed column, then the free column's text (ignored without one).
    pub(crate) fn row(&mut self, cells: Vec<String>, free: impl Into<String>) {
        debug_assert_eq!(cells.len(), self.columns.len(), "one cell per column");
        self.rows.push((cells, free.into()));
    }

    /// Prints the header and every row.
    pub(crate) fn print(&self, out: &mut dyn Write) {
        let titles = self.columns.iter().map(|c| c.0.to_string()).collect();
        let _ = writeln!(out, "{}", self.line(&titles, self.free.unwrap_or("")));
        for (cells, free) in &self.rows {
            let _ = writeln!(out, "{}", self.line(cells, free));
        }
    }

    fn line(&self, cells: &Vec<String>, free: &str) -> String {
        let padded: Vec<String> = self
            .columns
            .iter()
            .zip(cells)
            .map(|(&(_, width, align), cell)| match align {
                Align::Left => format!("{cell:<width$}"),
                Align::Right => format!("{cell:>width$}"),
            })
            .collect();
        let mut line = padded.join(" ");
        if self.free.is_some() {
            line.push_str("  ");
            line.push_str(free);
        }
        line
    }
}

/// Prints a listing: `items` as one JSON document with `--output json`, else a [`Table`] with
/// `columns` (as [`Table::new`]) and the free column `free`, a row per item made by `row` (its
/// cells, then its free text).
pub(crate) fn print_listing<T: serde::Serialize>(
    out: &mut dyn Write, output: crate::Output, items: &[T],
    (columns, free): (&'static str, &'static str), row: impl Fn(&T) -> (Vec<String>, String),
) -> Result<(), crate::Failure> {
    if output == crate::Output::Json {
        return crate::common::print_json(out, &items);
    }
    let mut table = Table::new(columns).free(free);
    for item in items {
        let (cells, free) = row(item);
        table.row(cells, free);
    }
    table.print(out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_by_alignment_and_the_free_column_follows_two_spaces() {
        let mut t = Table::new("NAME<6 N>3").free("WHY");
        t.row(vec!["web".into(), "7".into()], "because");
        let mut out = Vec::new();
        t.print(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "NAME     N  WHY\nweb      7  because\n");
    }

    #[test]
    fn without_a_free_column_every_column_is_padded() {
        let mut t = Table::new("A<3 B<2");
        t.row(vec!["x".into(), "y".into()], "");
        let mut out = Vec::new();
        t.print(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "A   B \nx   y \n");
    }
}
