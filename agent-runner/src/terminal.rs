//! The runner's side of the agent's terminal: a vt100 screen fed with
//! everything the agent prints, the answers a real terminal would give to
//! the agent's queries, and the agent's own activity markers.
//!
//! Full-screen programs ask their terminal questions at startup (cursor
//! position, device attributes, colours) and some wait for the answer, so
//! a pty with nobody answering can stall them. The runner is that terminal.

use std::fmt::Write as _;
use std::num::NonZeroU16;

/// What the agent says it is doing, from codex's OSC 7501 markers
/// (`ESC ] 7501 ; state=idle:app=codex ESC \`; codex 0.169 sends `idle`,
/// `working`, `done` (turn finished, until the next key), `error` and
/// `clear` (leaving the screen)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activity {
    /// No marker seen yet (or the agent does not emit them).
    Unknown,
    Idle,
    Working,
    Done,
    /// The turn failed; the agent waits for input again.
    Error,
}

impl Activity {
    fn parse(value: &[u8]) -> Option<Self> {
        match value {
            b"idle" => Some(Self::Idle),
            b"working" | b"busy" => Some(Self::Working),
            b"done" => Some(Self::Done),
            b"error" => Some(Self::Error),
            b"clear" => Some(Self::Unknown),
            _ => None,
        }
    }

    /// Whether the agent waits for input: idle, done or failed.
    pub fn is_ready(self) -> bool {
        matches!(self, Self::Idle | Self::Done | Self::Error)
    }
}

/// What one chunk of output asked of the runner.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Bytes to write back to the agent: answers to its queries.
    pub replies: Vec<u8>,
    /// The last activity marker in the chunk.
    pub activity: Option<Activity>,
}

#[derive(Debug, Default)]
struct Callbacks {
    effects: Effects,
}

const OSC_TERMINATOR: &[u8] = b"\x1b\\";

impl vt100::Callbacks for Callbacks {
    fn unhandled_osc(&mut self, _: &mut vt100::Screen, params: &[&[u8]]) {
        match params {
            [b"7501", fields @ ..] => {
                // Attributes are `key=value`, joined by `:` (and `;`).
                let attributes = fields.iter().flat_map(|f| f.split(|&b| b == b':'));
                for attribute in attributes {
                    if let Some(activity) =
                        attribute.strip_prefix(b"state=").and_then(Activity::parse)
                    {
                        self.effects.activity = Some(activity);
                    }
                }
            }
            // Default foreground / background colour queries.
            [which @ (b"10" | b"11"), b"?"] => {
                let colour: &[u8] = if *which == b"10" {
                    b"rgb:e5e5/e5e5/e5e5"
                } else {
                    b"rgb:1e1e/1e1e/1e1e"
                };
                let replies = &mut self.effects.replies;
                replies.extend_from_slice(b"\x1b]");
                replies.extend_from_slice(which);
                replies.push(b';');
                replies.extend_from_slice(colour);
                replies.extend_from_slice(OSC_TERMINATOR);
            }
            _ => {}
        }
    }

    fn unhandled_csi(
        &mut self,
        screen: &mut vt100::Screen,
        i1: Option<u8>,
        _i2: Option<u8>,
        params: &[&[u16]],
        c: char,
    ) {
        let replies = &mut self.effects.replies;
        match (i1, c, params) {
            // Device status report: "are you there".
            (None, 'n', [[5]]) => replies.extend_from_slice(b"\x1b[0n"),
            // Cursor position report, 1-based.
            (None, 'n', [[6]]) => {
                let (row, col) = screen.cursor_position();
                let _ = write!(VecWriter(replies), "\x1b[{};{}R", row + 1, col + 1);
            }
            // Primary device attributes: a VT220-ish terminal. Programs that
            // probe for optional features (the kitty keyboard protocol's
            // `CSI ? u`) send this right after and take the answer as "no".
            (None, 'c', [] | [[0]]) => replies.extend_from_slice(b"\x1b[?62;22c"),
            _ => {}
        }
    }
}

struct VecWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The agent's screen as the runner sees it.
pub struct Terminal {
    parser: vt100::Parser<Callbacks>,
}

impl std::fmt::Debug for Terminal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (rows, cols) = self.parser.screen().size();
        f.debug_struct("Terminal")
            .field("rows", &rows)
            .field("cols", &cols)
            .finish()
    }
}

impl Terminal {
    pub fn new(rows: u16, cols: u16) -> Self {
        Self {
            parser: vt100::Parser::new_with_callbacks(
                NonZeroU16::new(rows).unwrap_or(NonZeroU16::MIN),
                NonZeroU16::new(cols).unwrap_or(NonZeroU16::MIN),
                0,
                Callbacks::default(),
            ),
        }
    }

    /// Feeds output and returns what it asked of the runner.
    pub fn process(&mut self, bytes: &[u8]) -> Effects {
        self.parser.process(bytes);
        std::mem::take(&mut self.parser.callbacks_mut().effects)
    }

    /// Whether the agent asked for bracketed paste (`CSI ? 2004 h`).
    pub fn bracketed_paste(&self) -> bool {
        self.parser.screen().bracketed_paste()
    }

    /// The screen as plain text, one line per row, trailing blanks trimmed.
    pub fn text(&self) -> String {
        let mut text = self.parser.screen().contents();
        while text.ends_with('\n') {
            text.pop();
        }
        text.push('\n');
        text
    }

    /// The screen as HTML `<span>`s with inline colours, for the watch page.
    pub fn html(&self) -> String {
        let screen = self.parser.screen();
        let (rows, cols) = screen.size();
        let (cursor_row, cursor_col) = screen.cursor_position();
        let show_cursor = !screen.hide_cursor();
        let mut html = String::with_capacity(usize::from(rows.get()) * usize::from(cols.get()) * 2);
        for row in 0..rows.get() {
            let mut open: Option<String> = None;
            for col in 0..cols.get() {
                let Some(cell) = screen.cell(row, col) else {
                    continue;
                };
                if cell.is_wide_continuation() {
                    continue;
                }
                let cursor = show_cursor && row == cursor_row && col == cursor_col;
                let style = cell_style(cell, cursor);
                if open.as_deref() != Some(style.as_str()) {
                    if open.is_some() {
                        html.push_str("</span>");
                    }
                    let _ = write!(html, "<span style=\"{style}\">");
                    open = Some(style);
                }
                let contents = cell.contents();
                if contents.is_empty() {
                    html.push(' ');
                } else {
                    escape_html_into(&mut html, contents);
                }
            }
            if open.is_some() {
                html.push_str("</span>");
            }
            html.push('\n');
        }
        html
    }
}

fn cell_style(cell: &vt100::Cell, cursor: bool) -> String {
    let mut fg = colour_css(cell.fgcolor());
    let mut bg = colour_css(cell.bgcolor());
    if cell.inverse() != cursor {
        std::mem::swap(&mut fg, &mut bg);
        fg.get_or_insert_with(|| DEFAULT_BG.to_owned());
        bg.get_or_insert_with(|| DEFAULT_FG.to_owned());
    }
    let mut style = String::new();
    if let Some(fg) = fg {
        let _ = write!(style, "color:{fg};");
    }
    if let Some(bg) = bg {
        let _ = write!(style, "background:{bg};");
    }
    if cell.bold() {
        style.push_str("font-weight:bold;");
    }
    if cell.dim() {
        style.push_str("opacity:.7;");
    }
    if cell.italic() {
        style.push_str("font-style:italic;");
    }
    if cell.underline() {
        style.push_str("text-decoration:underline;");
    }
    style
}

const DEFAULT_FG: &str = "#e5e5e5";
const DEFAULT_BG: &str = "#1e1e1e";

/// The xterm 16-colour palette.
const BASE16: [(u8, u8, u8); 16] = [
    (0x00, 0x00, 0x00),
    (0xcd, 0x00, 0x00),
    (0x00, 0xcd, 0x00),
    (0xcd, 0xcd, 0x00),
    (0x00, 0x00, 0xee),
    (0xcd, 0x00, 0xcd),
    (0x00, 0xcd, 0xcd),
    (0xe5, 0xe5, 0xe5),
    (0x7f, 0x7f, 0x7f),
    (0xff, 0x00, 0x00),
    (0x00, 0xff, 0x00),
    (0xff, 0xff, 0x00),
    (0x5c, 0x5c, 0xff),
    (0xff, 0x00, 0xff),
    (0x00, 0xff, 0xff),
    (0xff, 0xff, 0xff),
];

fn colour_css(colour: vt100::Color) -> Option<String> {
    let (r, g, b) = match colour {
        vt100::Color::Default => return None,
        vt100::Color::Rgb(r, g, b) => (r, g, b),
        vt100::Color::Idx(i) => xterm_256(i),
    };
    Some(format!("#{r:02x}{g:02x}{b:02x}"))
}

fn xterm_256(i: u8) -> (u8, u8, u8) {
    match i {
        0..=15 => BASE16[usize::from(i)],
        16..=231 => {
            let i = i - 16;
            let level = |v: u8| if v == 0 { 0 } else { 55 + v * 40 };
            (level(i / 36), level((i / 6) % 6), level(i % 6))
        }
        232..=255 => {
            let v = 8 + (i - 232) * 10;
            (v, v, v)
        }
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Strips terminal escape sequences from a stream, keeping the text, tabs
/// and newlines. Full-screen programs place text with cursor movements
/// rather than spaces and newlines, so the filter follows the cursor: a
/// move right on the same row becomes spaces, a move to another row a
/// newline, and the words stay apart. Stateful, so a sequence split across
/// chunks is still removed whole.
#[derive(Default)]
pub struct TextFilter {
    parser: vte::Parser,
    cursor: Cursor,
}

impl std::fmt::Debug for TextFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TextFilter")
    }
}

/// Where the filter believes the cursor is (0-based), from what it printed
/// and the movements it saw.
#[derive(Debug, Default, Clone, Copy)]
struct Cursor {
    row: u32,
    col: u32,
}

struct TextSink<'a> {
    out: &'a mut Vec<u8>,
    cursor: &'a mut Cursor,
}

/// A screen is narrow: never turn one movement into more spaces than this.
const MAX_GAP: u32 = 512;

impl TextSink<'_> {
    fn newline(&mut self) {
        if !matches!(self.out.last(), None | Some(b'\n')) {
            self.out.push(b'\n');
        }
    }

    /// Moves to (`row`, `col`), writing what separates the text there from
    /// the text before.
    fn move_to(&mut self, row: u32, col: u32) {
        if row != self.cursor.row {
            self.newline();
            self.out
                .extend(std::iter::repeat_n(b' ', col.min(MAX_GAP) as usize));
        } else if col > self.cursor.col {
            let gap = (col - self.cursor.col).min(MAX_GAP);
            self.out.extend(std::iter::repeat_n(b' ', gap as usize));
        } else if col < self.cursor.col {
            // Back over text already written: keep it on its own line.
            self.newline();
        }
        *self.cursor = Cursor { row, col };
    }
}

impl vte::Perform for TextSink<'_> {
    fn print(&mut self, c: char) {
        let mut utf8 = [0; 4];
        self.out
            .extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        self.cursor.col = self.cursor.col.saturating_add(1);
    }

    fn execute(&mut self, byte: u8) {
        match byte {
            b'\n' => {
                self.out.push(b'\n');
                self.cursor.row = self.cursor.row.saturating_add(1);
                self.cursor.col = 0;
            }
            b'\r' => self.cursor.col = 0,
            b'\t' => {
                self.out.push(b'\t');
                self.cursor.col = (self.cursor.col / 8 + 1) * 8;
            }
            _ => {}
        }
    }

    fn csi_dispatch(
        &mut self,
        params: &vte::Params,
        intermediates: &[u8],
        _ignore: bool,
        action: char,
    ) {
        if !intermediates.is_empty() {
            return;
        }
        let mut values = params
            .iter()
            .map(|p| u32::from(p.first().copied().unwrap_or(0)));
        let first = values.next().unwrap_or(0);
        let second = values.next().unwrap_or(0);
        let n = first.max(1);
        let Cursor { row, col } = *self.cursor;
        match action {
            'C' => self.move_to(row, col.saturating_add(n)),
            'D' => self.move_to(row, col.saturating_sub(n)),
            'B' => self.move_to(row.saturating_add(n), col),
            'A' => self.move_to(row.saturating_sub(n), col),
            'E' => self.move_to(row.saturating_add(n), 0),
            'F' => self.move_to(row.saturating_sub(n), 0),
            'G' | '`' => self.move_to(row, n - 1),
            'd' => self.move_to(n - 1, col),
            'H' | 'f' => self.move_to(n - 1, second.max(1) - 1),
            _ => {}
        }
    }
}

impl TextFilter {
    pub fn filter(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        let mut sink = TextSink {
            out: &mut out,
            cursor: &mut self.cursor,
        };
        self.parser.advance(&mut sink, bytes);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_markers_are_read() {
        let mut term = Terminal::new(24, 80);
        let effects = term.process(b"hi\x1b]7501;state=working\x07there");
        assert_eq!(effects.activity, Some(Activity::Working));
        let effects = term.process(b"\x1b]7501;state=idle:app=codex\x1b\\");
        assert_eq!(effects.activity, Some(Activity::Idle));
        let effects = term.process(b"\x1b]7501;state=done:app=codex\x1b\\x");
        assert_eq!(effects.activity, Some(Activity::Done));
        let effects = term.process(b"\x1b]7501;state=clear:app=codex\x1b\\");
        assert_eq!(effects.activity, Some(Activity::Unknown));
        assert!(term.text().starts_with("hithere"));
    }

    #[test]
    fn queries_are_answered() {
        let mut term = Terminal::new(24, 80);
        let effects = term.process(b"abc\x1b[6n");
        assert_eq!(effects.replies, b"\x1b[1;4R");
        let effects = term.process(b"\x1b[?u\x1b[c");
        assert_eq!(effects.replies, b"\x1b[?62;22c");
        let effects = term.process(b"\x1b]11;?\x07");
        assert_eq!(effects.replies, b"\x1b]11;rgb:1e1e/1e1e/1e1e\x1b\\");
    }

    #[test]
    fn html_has_colours_and_escapes() {
        let mut term = Terminal::new(2, 20);
        term.process(b"\x1b[31m<red>\x1b[0m & plain");
        let html = term.html();
        assert!(
            html.contains("color:#cd0000;\">&lt;red&gt;</span>"),
            "{html}"
        );
        assert!(html.contains("&amp; plain"), "{html}");
    }

    #[test]
    fn text_filter_handles_split_sequences() {
        let mut filter = TextFilter::default();
        let mut out = filter.filter(b"a\x1b[3");
        out.extend(filter.filter(b"1mb\x1b]0;title\x07c\r\n"));
        assert_eq!(out, b"abc\n");
    }

    #[test]
    fn text_filter_keeps_words_apart() {
        let mut filter = TextFilter::default();
        let out = filter.filter(b"\x1b[3;1HAll\x1b[1Cdone:\x1b[3;11Hcreated\x1b[4;3Hnext");
        assert_eq!(String::from_utf8_lossy(&out), "All done: created\n  next");
    }
}
