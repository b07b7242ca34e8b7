//! Report outputs (AVP-CONF-30..33): a terminal tree grouped by spec section,
//! the JSON master file, JUnit XML and one self-contained HTML page.

pub mod html;
pub mod junit;
pub mod terminal;

use crate::runner::RunReport;

/// The JSON report: the master file other formats could be re-rendered from.
pub fn json(report: &RunReport) -> String {
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// Escapes text for XML and HTML bodies and attributes. Characters XML 1.0
/// cannot carry at all (most C0 controls) become U+FFFD.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// A classic 16-bytes-per-line hex dump with an ASCII column.
pub fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        out.push_str(&format!("{:08x}  ", i * 16));
        for j in 0..16 {
            match chunk.get(j) {
                Some(b) => out.push_str(&format!("{b:02x} ")),
                None => out.push_str("   "),
            }
            if j == 7 {
                out.push(' ');
            }
        }
        out.push_str(" |");
        out.extend(chunk.iter().map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '.'
            }
        }));
        out.push_str("|\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_dump_layout() {
        let dump = hex_dump(b"AV\x01\x00hello, world!!\x7f");
        assert_eq!(
            dump,
            "00000000  41 56 01 00 68 65 6c 6c  6f 2c 20 77 6f 72 6c 64  |AV..hello, world|\n\
             00000010  21 21 7f                                          |!!.|\n"
        );
    }

    #[test]
    fn escape_handles_markup_and_controls() {
        assert_eq!(
            escape("<a href=\"x\">&'\u{1}</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;\u{fffd}&lt;/a&gt;"
        );
    }
}
