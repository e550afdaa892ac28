//! Scanner framing: turns the bytes a serial scanner sends into scans.
//! Pure; the driver that uses it is `scanner`.
//!
//! Scanners end each code with CR, LF or CR LF, or wrap it in STX ... ETX,
//! or send nothing at all after it (then a pause in the byte stream ends
//! the code: the driver calls [`Framer::flush`] after `idle` without bytes).
//! Codes may start with an AIM symbology identifier (`]E0`), kept as is.
//!
//! Garbage never stops the scanner: an over-long frame or one with control
//! bytes is reported as an error and the framer resynchronises on the next
//! terminator.

use serde::{Deserialize, Serialize};

/// How codes are delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Terminator {
    /// `\r`
    Cr,
    /// `\n`
    Lf,
    /// `\r\n` (a lone CR or LF also ends a code).
    CrLf,
    /// STX (0x02) before, ETX (0x03) after.
    StxEtx,
    /// Nothing: codes end when the line goes quiet.
    None,
}

/// What came out of the framer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A code.
    Code(String),
    /// Bytes that were not a code, with the reason.
    Garbage(String),
}

/// Longest code accepted (GS1-128 can carry 48 data characters; a little slack).
pub const MAX_CODE: usize = 96;

/// The framer's state.
#[derive(Debug, Clone)]
pub struct Framer {
    /// Delimiting rule.
    terminator: Terminator,
    /// Bytes of the code being read.
    buf: Vec<u8>,
    /// For STX/ETX: inside a frame.
    in_frame: bool,
    /// Skipping to the next terminator after an over-long frame.
    discarding: bool,
}

impl Framer {
    /// A framer for `terminator`.
    pub fn new(terminator: Terminator) -> Self {
        Framer {
            terminator,
            buf: Vec::new(),
            in_frame: false,
            discarding: false,
        }
    }

    fn finish(&mut self, out: &mut Vec<Frame>) {
        let bytes = std::mem::take(&mut self.buf);
        if self.discarding {
            self.discarding = false;
            out.push(Frame::Garbage(format!("frame longer than {MAX_CODE} bytes")));
            return;
        }
        if bytes.is_empty() {
            return;
        }
        if let Some(b) = bytes.iter().find(|b| b.is_ascii_control() || !b.is_ascii()) {
            out.push(Frame::Garbage(format!("byte 0x{b:02x} inside a code")));
            return;
        }
        out.push(Frame::Code(String::from_utf8_lossy(&bytes).into_owned()));
    }

    fn take(&mut self, b: u8) {
        if self.discarding {
            return;
        }
        if self.buf.len() >= MAX_CODE {
            self.discarding = true;
            self.buf.clear();
            return;
        }
        self.buf.push(b);
    }

    /// Feeds bytes; returns the frames they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        for &b in bytes {
            match self.terminator {
                Terminator::Cr | Terminator::Lf | Terminator::CrLf => {
                    let ends = match self.terminator {
                        Terminator::Cr => b == b'\r',
                        Terminator::Lf => b == b'\n',
                        _ => b == b'\r' || b == b'\n',
                    };
                    if ends {
                        self.finish(&mut out);
                    } else if !(self.terminator == Terminator::Lf && b == b'\r') {
                        self.take(b);
                    }
                }
                Terminator::StxEtx => match b {
                    0x02 => {
                        if self.in_frame && !self.buf.is_empty() {
                            out.push(Frame::Garbage("STX inside a frame".into()));
                        }
                        self.buf.clear();
                        self.discarding = false;
                        self.in_frame = true;
                    }
                    0x03 if self.in_frame => {
                        self.in_frame = false;
                        self.finish(&mut out);
                    }
                    _ if self.in_frame => self.take(b),
                    b'\r' | b'\n' => {}
                    _ => out.push(Frame::Garbage(format!("byte 0x{b:02x} outside STX/ETX"))),
                },
                Terminator::None => self.take(b),
            }
        }
        out
    }

    /// The line went quiet: whatever is buffered is a code (for scanners
    /// that send no terminator) or an unfinished frame (for the others).
    pub fn flush(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        if self.buf.is_empty() && !self.discarding {
            return out;
        }
        match self.terminator {
            Terminator::None => self.finish(&mut out),
            _ => {
                self.buf.clear();
                self.discarding = false;
                self.in_frame = false;
                out.push(Frame::Garbage("unterminated code".into()));
            }
        }
        out
    }

    /// True while bytes of an unfinished code are buffered.
    pub fn pending(&self) -> bool {
        !self.buf.is_empty() || self.discarding
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> Frame {
        Frame::Code(s.into())
    }

    #[test]
    fn line_terminators_split_codes_across_reads() {
        let mut f = Framer::new(Terminator::CrLf);
        assert_eq!(f.push(b"40063813"), vec![]);
        assert_eq!(
            f.push(b"33931\r\n]E0036000291452\r\n"),
            vec![code("4006381333931"), code("]E0036000291452")]
        );
        let mut f = Framer::new(Terminator::Cr);
        assert_eq!(f.push(b"123\r456\r"), vec![code("123"), code("456")]);
        let mut f = Framer::new(Terminator::Lf);
        assert_eq!(f.push(b"123\r\n"), vec![code("123")]);
    }

    #[test]
    fn stx_etx_frames_and_stray_bytes() {
        let mut f = Framer::new(Terminator::StxEtx);
        assert_eq!(
            f.push(b"\x02123\x03x\x02456\x03"),
            vec![
                code("123"),
                Frame::Garbage("byte 0x78 outside STX/ETX".into()),
                code("456")
            ]
        );
    }

    #[test]
    fn idle_ends_a_code_without_terminator() {
        let mut f = Framer::new(Terminator::None);
        assert_eq!(f.push(b"4006381333931"), vec![]);
        assert!(f.pending());
        assert_eq!(f.flush(), vec![code("4006381333931")]);
        assert_eq!(f.flush(), vec![]);
    }

    #[test]
    fn garbage_is_reported_and_the_framer_resynchronises() {
        let mut f = Framer::new(Terminator::CrLf);
        let long = vec![b'9'; MAX_CODE + 10];
        let mut frames = f.push(&long);
        frames.extend(f.push(b"\r\n123\x07\r\n456\r\n"));
        assert_eq!(
            frames,
            vec![
                Frame::Garbage(format!("frame longer than {MAX_CODE} bytes")),
                Frame::Garbage("byte 0x07 inside a code".into()),
                code("456")
            ]
        );
        let mut f = Framer::new(Terminator::CrLf);
        f.push(b"12");
        assert_eq!(f.flush(), vec![Frame::Garbage("unterminated code".into())]);
    }
}
