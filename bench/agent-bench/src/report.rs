//! The benchmark's output: a header that says where and when it ran,
//! sections of tables (Markdown), notes, and `key=value` lines for scripts.
//! Progress goes to stderr while it runs; the report to stdout at the end.

use std::fmt::Write as _;
use std::io::Write as _;

#[derive(Default)]
pub struct Section {
    title: String,
    intro: Vec<String>,
    head: Vec<String>,
    rows: Vec<Vec<String>>,
    after: Vec<String>,
}

#[derive(Default)]
pub struct Report {
    header: Vec<String>,
    sections: Vec<Section>,
    keys: Vec<(String, String)>,
    notes: Vec<String>,
}

impl Report {
    pub fn header_line(&mut self, line: String) {
        eprintln!("bench: {line}");
        self.header.push(line);
    }

    /// Starts a section with a table of the given columns.
    pub fn section(&mut self, title: &str, head: &[&str]) {
        eprintln!("bench: --- {title}");
        self.sections.push(Section {
            title: title.to_owned(),
            head: head.iter().map(|s| (*s).to_owned()).collect(),
            ..Section::default()
        });
    }

    fn current(&mut self) -> &mut Section {
        if self.sections.is_empty() {
            self.sections.push(Section::default());
        }
        let last = self.sections.len() - 1;
        &mut self.sections[last]
    }

    /// A line of text before the current section's table.
    pub fn intro(&mut self, line: String) {
        self.current().intro.push(line);
    }

    /// A line of text after the current section's table.
    pub fn after(&mut self, line: String) {
        eprintln!("bench: {line}");
        self.current().after.push(line);
    }

    pub fn row(&mut self, cells: Vec<String>) {
        eprintln!("bench: | {} |", cells.join(" | "));
        self.current().rows.push(cells);
    }

    pub fn key(&mut self, k: &str, v: impl std::fmt::Display) {
        let v = v.to_string();
        eprintln!("bench: {k}={v}");
        self.keys.push((k.to_owned(), v));
    }

    pub fn note(&mut self, n: String) {
        eprintln!("bench: NOTE {n}");
        self.notes.push(n);
    }

    pub fn print(&self) {
        let mut out = String::new();
        let _ = writeln!(out);
        for h in &self.header {
            let _ = writeln!(out, "{h}");
        }
        for s in &self.sections {
            let _ = writeln!(out, "\n## {}\n", s.title);
            for l in &s.intro {
                let _ = writeln!(out, "{l}");
            }
            if !s.intro.is_empty() {
                let _ = writeln!(out);
            }
            if !s.rows.is_empty() {
                let cols = s.head.len().max(s.rows.iter().map(Vec::len).max().unwrap_or(0));
                let width = |c: usize| {
                    s.rows
                        .iter()
                        .filter_map(|r| r.get(c))
                        .chain(s.head.get(c))
                        .map(|x| x.chars().count())
                        .max()
                        .unwrap_or(0)
                };
                let widths: Vec<usize> = (0..cols).map(width).collect();
                let line = |cells: &[String]| {
                    let mut l = String::from("|");
                    for (c, w) in widths.iter().enumerate() {
                        let cell = cells.get(c).map_or("", String::as_str);
                        let pad = w.saturating_sub(cell.chars().count());
                        if c == 0 {
                            let _ = write!(l, " {cell}{} |", " ".repeat(pad));
                        } else {
                            let _ = write!(l, " {}{cell} |", " ".repeat(pad));
                        }
                    }
                    l
                };
                let _ = writeln!(out, "{}", line(&s.head));
                let mut sep = String::from("|");
                for (c, w) in widths.iter().enumerate() {
                    let _ = write!(sep, "{}{}|", "-".repeat(w + 1), if c == 0 { "-" } else { ":" });
                }
                let _ = writeln!(out, "{sep}");
                for r in &s.rows {
                    let _ = writeln!(out, "{}", line(r));
                }
            }
            if !s.after.is_empty() {
                let _ = writeln!(out);
            }
            for l in &s.after {
                let _ = writeln!(out, "{l}");
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\n## Notes\n");
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        let _ = writeln!(out, "\n## Figures as key=value\n");
        for (k, v) in &self.keys {
            let _ = writeln!(out, "{k}={v}");
        }
        print!("{out}");
        let _ = std::io::stdout().flush();
    }
}
