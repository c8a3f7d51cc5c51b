//! What may reach the agent's terminal from a `message`.
//!
//! A message is text a person would type. Bytes and key encodings that a
//! terminal program reads as commands instead of text are dropped before
//! anything is written to the pty: the job-control and quit keys (Ctrl+Z,
//! Ctrl+\, Ctrl+C, Ctrl+D), flow control (XON/XOFF), every other C0 and C1
//! control but tab and newline, and whole escape sequences (CSI, SS3, OSC,
//! DCS and Alt+key), which covers the kitty keyboard protocol's encodings of
//! those keys (`ESC [ 122 ; 5 u` is Ctrl+Z) and the `ESC [ 201 ~` that would
//! end a bracketed paste early. Dropping is the first layer of the defence;
//! the pty's termios, the agent running as its own session leader, and a
//! watchdog that resumes a stopped agent are the others (`session.rs`).
//!
//! Deliberate interrupts are not text: they are [`Key`]s, sent on purpose.

/// A key sent on purpose, never as part of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Key {
    /// Ctrl+C: interrupts the agent's current turn.
    CtrlC,
    Enter,
    Escape,
}

impl Key {
    /// The bytes a terminal sends for the key.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            Self::CtrlC => b"\x03",
            Self::Enter => b"\r",
            Self::Escape => b"\x1b",
        }
    }

    /// Parses a key name as given to the `message` tool (`ctrl-c`, `enter`,
    /// `escape`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "ctrl-c" | "ctrl+c" | "^c" => Some(Self::CtrlC),
            "enter" | "return" => Some(Self::Enter),
            "escape" | "esc" => Some(Self::Escape),
            _ => None,
        }
    }
}

/// One thing removed from a message, for the caller's log and tool result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// Byte offset in the original text.
    pub at: usize,
    /// What was removed, as it appeared.
    pub bytes: Vec<u8>,
    pub why: &'static str,
}

/// A message made safe to type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sanitized {
    pub text: Vec<u8>,
    pub dropped: Vec<Dropped>,
}

const ESC: u8 = 0x1b;

fn control_name(b: u8) -> &'static str {
    match b {
        0x03 => "Ctrl+C would interrupt the agent",
        0x04 => "Ctrl+D would end the agent's input",
        0x11 | 0x13 => "XON/XOFF would stop or start the terminal's output",
        0x1a => "Ctrl+Z would suspend the agent",
        0x1c => "Ctrl+\\ would quit the agent",
        0x0d => "a carriage return would press Enter mid-message",
        0x7f => "DEL would erase typed text",
        _ => "a control character is a key, not text",
    }
}

/// Removes everything from `text` that a terminal program would take as a
/// key rather than text. Tab and newline stay (a newline inside a
/// bracketed paste is text); UTF-8 text is kept byte for byte.
pub fn sanitize(text: &[u8]) -> Sanitized {
    let mut out = Vec::with_capacity(text.len());
    let mut dropped = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        match b {
            b'\t' | b'\n' => {
                out.push(b);
                i += 1;
            }
            ESC => {
                let end = escape_end(text, i);
                dropped.push(Dropped {
                    at: i,
                    bytes: text[i..end].to_vec(),
                    why: "an escape sequence is a key or a terminal command, not text",
                });
                i = end;
            }
            0x00..=0x1f | 0x7f => {
                dropped.push(Dropped {
                    at: i,
                    bytes: vec![b],
                    why: control_name(b),
                });
                i += 1;
            }
            // C1 controls arrive UTF-8 encoded as C2 80..C2 9F; 0x9B is CSI.
            0xc2 if matches!(text.get(i + 1), Some(0x80..=0x9f)) => {
                let end = if text[i + 1] == 0x9b {
                    csi_end(text, i + 2)
                } else {
                    i + 2
                };
                dropped.push(Dropped {
                    at: i,
                    bytes: text[i..end].to_vec(),
                    why: "a C1 control is a terminal command, not text",
                });
                i = end;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    Sanitized { text: out, dropped }
}

/// The end of the escape sequence starting at `start` (an ESC).
fn escape_end(text: &[u8], start: usize) -> usize {
    match text.get(start + 1) {
        None => start + 1,
        Some(b'[') => csi_end(text, start + 2),
        // OSC, DCS, SOS, PM, APC: up to BEL or ESC \ (string terminator).
        Some(b']' | b'P' | b'X' | b'^' | b'_') => {
            let mut i = start + 2;
            while i < text.len() {
                if text[i] == 0x07 {
                    return i + 1;
                }
                if text[i] == ESC && text.get(i + 1) == Some(&b'\\') {
                    return i + 2;
                }
                i += 1;
            }
            text.len()
        }
        // SS3 (application keypad/cursor keys): one more byte.
        Some(b'O') => (start + 3).min(text.len()),
        // Alt+key or a two-byte escape: ESC and the next character.
        Some(_) => start + 1 + utf8_len(text, start + 1),
    }
}

/// The end of a CSI sequence whose parameters start at `i`: parameter and
/// intermediate bytes (0x20..=0x3f), then one final byte (0x40..=0x7e).
fn csi_end(text: &[u8], mut i: usize) -> usize {
    while i < text.len() && (0x20..=0x3f).contains(&text[i]) {
        i += 1;
    }
    if i < text.len() && (0x40..=0x7e).contains(&text[i]) {
        i + 1
    } else {
        i
    }
}

fn utf8_len(text: &[u8], i: usize) -> usize {
    let len = match text[i] {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    };
    len.min(text.len() - i)
}

/// Wraps sanitized text in a bracketed paste, so a full-screen program takes
/// newlines in it as text; Enter is sent on its own afterwards.
pub fn bracketed_paste(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 12);
    out.extend_from_slice(b"\x1b[200~");
    out.extend_from_slice(text);
    out.extend_from_slice(b"\x1b[201~");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(s: &[u8]) -> Vec<u8> {
        sanitize(s).text
    }

    #[test]
    fn plain_text_and_unicode_pass_unchanged() {
        let text = "fix the failing test in src/lib.rs\n\tthen run `cargo test` — ünïcode ✓ 🚀";
        let s = sanitize(text.as_bytes());
        assert_eq!(s.text, text.as_bytes());
        assert!(s.dropped.is_empty());
    }

    #[test]
    fn job_control_quit_and_flow_keys_are_dropped() {
        for (key, name) in [
            (0x1a, "Ctrl+Z"),
            (0x1c, "Ctrl+\\"),
            (0x03, "Ctrl+C"),
            (0x04, "Ctrl+D"),
            (0x13, "XOFF"),
            (0x11, "XON"),
            (0x0d, "carriage return"),
            (0x7f, "DEL"),
            (0x00, "NUL"),
        ] {
            let s = sanitize(&[b'a', key, b'b']);
            assert_eq!(s.text, b"ab", "{name}");
            assert_eq!(s.dropped.len(), 1, "{name}");
            assert_eq!(s.dropped[0].at, 1);
            assert_eq!(s.dropped[0].bytes, [key]);
        }
        assert!(sanitize(b"\x1a").dropped[0].why.contains("suspend"));
    }

    #[test]
    fn kitty_and_csi_key_encodings_are_dropped_whole() {
        // Ctrl+Z, Ctrl+C and Ctrl+\ in the kitty keyboard protocol.
        assert_eq!(clean(b"a\x1b[122;5ub"), b"ab");
        assert_eq!(clean(b"a\x1b[99;5ub"), b"ab");
        assert_eq!(clean(b"a\x1b[92;5ub"), b"ab");
        // Arrow keys, function keys, SS3 keys, Alt+x.
        assert_eq!(clean(b"a\x1b[Ab\x1b[15~c\x1bOPd\x1bxe"), b"abcde");
        // 8-bit CSI (UTF-8 encoded C1) and other C1 controls.
        assert_eq!(clean("a\u{9b}122;5ub\u{85}c".as_bytes()), b"abc");
    }

    #[test]
    fn a_message_cannot_end_a_bracketed_paste() {
        let s = sanitize(b"text\x1b[201~\x1a rm -rf\r");
        assert_eq!(s.text, b"text rm -rf");
        let pasted = bracketed_paste(&s.text);
        assert_eq!(pasted, b"\x1b[200~text rm -rf\x1b[201~");
        // Exactly one paste end: the one we add.
        let ends = pasted.windows(6).filter(|w| w == b"\x1b[201~").count();
        assert_eq!(ends, 1);
    }

    #[test]
    fn osc_and_dcs_strings_and_truncated_sequences_are_dropped() {
        assert_eq!(clean(b"a\x1b]0;title\x07b\x1bPq#0\x1b\\c"), b"abc");
        assert_eq!(clean(b"a\x1b]52;c;aGk="), b"a");
        assert_eq!(clean(b"a\x1b"), b"a");
        assert_eq!(clean(b"a\x1b["), b"a");
        assert_eq!(clean(b"a\x1b[12"), b"a");
    }

    #[test]
    fn deliberate_keys_have_names() {
        assert_eq!(Key::from_name("ctrl-c"), Some(Key::CtrlC));
        assert_eq!(Key::from_name("Enter"), Some(Key::Enter));
        assert_eq!(Key::from_name("ctrl-z"), None, "Ctrl+Z is never sent");
        assert_eq!(Key::CtrlC.bytes(), b"\x03");
    }
}
