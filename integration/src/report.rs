//! What a benchmark reports: tables printed as Markdown, and, when
//! `BENCH_RESULTS` names a folder (the `integration/bench` driver sets it),
//! the same tables and the series to plot saved as JSON lines for
//! `bench-report`, which writes the report and its PNG plots.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

/// The median of `times` (the upper middle one for an even count).
pub fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// The `p` quantile (0 to 1) of `sorted` times, by nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One Markdown table of a benchmark's results.
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, header: &[&str]) -> Self {
        Self {
            title: title.to_owned(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(cells.len(), self.header.len(), "a row of {}", self.title);
        self.rows.push(cells);
    }

    /// Adds a row written as a Markdown table line, `| a | b |`.
    pub fn markdown_row(&mut self, line: &str) {
        let line = line.trim();
        let inner = line.strip_prefix('|').unwrap_or(line);
        let inner = inner.strip_suffix('|').unwrap_or(inner);
        self.row(inner.split('|').map(|c| c.trim().to_owned()).collect());
    }

    /// Prints the table and records it for the report.
    pub fn print(&self) {
        println!("{}", self.markdown());
        save(&json!({
            "table": self.title,
            "header": self.header,
            "rows": self.rows,
        }));
    }

    pub fn markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |", cells.join(" | "));
        let mut out = format!("{}\n\n{}\n", self.title, line(&self.header));
        out += &format!("|{}\n", "---|".repeat(self.header.len()));
        for row in &self.rows {
            out += &line(row);
            out.push('\n');
        }
        out
    }
}

/// A line chart for the report: one line per contender.
pub struct Plot {
    name: String,
    title: String,
    x_label: String,
    y_label: String,
    log_x: bool,
    log_y: bool,
    lines: Vec<(String, Vec<(f64, f64)>)>,
}

impl Plot {
    /// `name` is the PNG's file name, without extension.
    pub fn new(name: &str, title: &str, x_label: &str, y_label: &str) -> Self {
        Self {
            name: name.to_owned(),
            title: title.to_owned(),
            x_label: x_label.to_owned(),
            y_label: y_label.to_owned(),
            log_x: false,
            log_y: false,
            lines: Vec::new(),
        }
    }

    pub fn log_x(mut self) -> Self {
        self.log_x = true;
        self
    }

    pub fn log_y(mut self) -> Self {
        self.log_y = true;
        self
    }

    pub fn point(&mut self, line: &str, x: f64, y: f64) {
        match self.lines.iter_mut().find(|(name, _)| name == line) {
            Some((_, points)) => points.push((x, y)),
            None => self.lines.push((line.to_owned(), vec![(x, y)])),
        }
    }

    /// Records the plot for the report (nothing is printed).
    pub fn save(&self) {
        save(&json!({
            "plot": self.name,
            "title": self.title,
            "x_label": self.x_label,
            "y_label": self.y_label,
            "log_x": self.log_x,
            "log_y": self.log_y,
            "lines": self.lines.iter().map(|(name, points)| json!({
                "name": name,
                "points": points.iter().map(|(x, y)| [x, y]).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }));
    }
}

/// Appends one record to `$BENCH_RESULTS/<bench>.jsonl`, where `<bench>`
/// is the running benchmark's name.
fn save(record: &Value) {
    let Some(dir) = std::env::var_os("BENCH_RESULTS") else {
        return;
    };
    let bench = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| match stem.rsplit_once('-') {
            // cargo names bench binaries `<name>-<hash>`.
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
            _ => stem,
        })
        .unwrap_or_else(|| "bench".to_owned());
    let path = PathBuf::from(dir).join(format!("{bench}.jsonl"));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    writeln!(file, "{record}").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_markdown_row_keeps_its_empty_cells() {
        let mut table = Table::new("RSS", &["measure", "ours", "peer", "ratio"]);
        table.markdown_row("| runner RSS, idle | 9 MiB | | |");
        table.markdown_row("| start | 106 ms (129 ms) | 90 ms | 1.18x |");
        assert_eq!(
            table.markdown(),
            "RSS\n\n| measure | ours | peer | ratio |\n|---|---|---|---|\n\
             | runner RSS, idle | 9 MiB |  |  |\n| start | 106 ms (129 ms) | 90 ms | 1.18x |\n"
        );
    }
}
