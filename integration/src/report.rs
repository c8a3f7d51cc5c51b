//! What a benchmark reports: tables printed as Markdown, and, when
//! `BENCH_RESULTS` names a folder (the `integration/bench` driver sets it),
//! the same tables and the series to plot saved as JSON lines for
//! `bench-report`, which writes the report and its PNG plots. A record is
//! a [`Record`] serialized: this file alone knows the format.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

/// One line of a bench's `<bench>.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Record {
    Table(Table),
    Plot(Plot),
}

/// One Markdown table of a benchmark's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Table {
    #[serde(rename = "table")]
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
        save(&Record::Table(self.clone()));
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plot {
    /// The PNG's file name, without extension.
    #[serde(rename = "plot")]
    pub name: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    pub log_y: bool,
    pub lines: Vec<Line>,
}

/// One contender's points, `(x, y)`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
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
        match self.lines.iter_mut().find(|l| l.name == line) {
            Some(l) => l.points.push((x, y)),
            None => self.lines.push(Line {
                name: line.to_owned(),
                points: vec![(x, y)],
            }),
        }
    }

    /// Records the plot for the report (nothing is printed).
    pub fn save(&self) {
        save(&Record::Plot(self.clone()));
    }
}

/// Appends one record to `$BENCH_RESULTS/<bench>.jsonl`, where `<bench>`
/// is the running benchmark's name.
fn save(record: &Record) {
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
    let line = serde_json::to_string(record).expect("a record serializes");
    writeln!(file, "{line}").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_back_as_what_was_saved() {
        let mut table = Table::new("T", &["a", "b"]);
        table.row(vec!["1".into(), "2".into()]);
        let mut plot = Plot::new("p", "P", "x", "y").log_x();
        plot.point("ours", 1.0, 2.0);
        for record in [Record::Table(table), Record::Plot(plot)] {
            let line = serde_json::to_string(&record).unwrap();
            let back: Record = serde_json::from_str(&line).unwrap();
            assert_eq!(serde_json::to_string(&back).unwrap(), line);
        }
        assert!(serde_json::from_str::<Record>(r#"{"table":"T","header":["a"]}"#).is_err());
    }

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
