//! Mettler Toledo MT-SICS (level 0) over a serial line: commands and reply
//! parsing. Pure; the driver that uses it is `scale`.
//!
//! Commands end with CR LF. Replies used here:
//!
//! | reply | meaning |
//! |---|---|
//! | `S S     100.00 g` | stable weight (to `S` or `SI`) |
//! | `S D      99.50 g` | dynamic (unstable) weight (to `SI`) |
//! | `S I` | command understood but not executable now |
//! | `S +` / `S -` | overload / underload |
//! | `Z A` | zeroed; `Z I`, `Z +`, `Z -` as above |
//! | `T S      10.00 g` | tared, with the tare weight; `T I`, `T +`, `T -` |
//! | `ES` / `ET` / `EL` | syntax / transmission / logical error |

/// A command to the scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// `S`: send the next stable weight.
    Stable,
    /// `SI`: send the current weight at once (stable or not).
    Immediate,
    /// `Z`: zero.
    Zero,
    /// `T`: tare.
    Tare,
}

impl Command {
    /// The bytes to send.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            Command::Stable => b"S\r\n",
            Command::Immediate => b"SI\r\n",
            Command::Zero => b"Z\r\n",
            Command::Tare => b"T\r\n",
        }
    }

    /// The identifier its replies start with.
    fn reply_id(self) -> &'static str {
        match self {
            Command::Stable | Command::Immediate => "S",
            Command::Zero => "Z",
            Command::Tare => "T",
        }
    }
}

/// A parsed reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// A weight in milligrams; `stable` false for a dynamic reading.
    Weight {
        /// Stable or dynamic.
        stable: bool,
        /// Net weight, mg (negative below zero).
        milligrams: i64,
    },
    /// Zeroed.
    Zeroed,
    /// Tared; the tare weight in mg.
    Tared {
        /// Tare weight, mg.
        milligrams: i64,
    },
    /// Understood, not executable now (busy, unstable for too long).
    NotExecutable,
    /// Over the scale's range.
    Overload,
    /// Under the scale's range.
    Underload,
    /// `ES`: the scale did not understand the command.
    SyntaxError,
    /// `ET`: the scale received garbled bytes.
    TransmissionError,
    /// `EL`: the command is not allowed now.
    LogicalError,
}

/// Why a reply line could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not an MT-SICS reply at all.
    #[error("not an MT-SICS reply: {0:?}")]
    Garbled(String),
    /// A reply to another command than the one in flight.
    #[error("reply {got:?} does not answer {expected:?}")]
    Unexpected {
        /// The command in flight.
        expected: Command,
        /// The reply line.
        got: String,
    },
    /// A weight with an unknown unit.
    #[error("unknown unit {0:?}")]
    Unit(String),
}

/// Parses a weight value and unit into milligrams: `"100.00"`, `"g"`.
fn milligrams(value: &str, unit: &str) -> Result<i64, ParseError> {
    let per_unit: i64 = match unit {
        "mg" => 1,
        "g" => 1_000,
        "kg" => 1_000_000,
        "lb" => 453_592,
        "oz" => 28_350,
        other => return Err(ParseError::Unit(other.to_owned())),
    };
    let garbled = || ParseError::Garbled(format!("{value} {unit}"));
    let (neg, digits) = match value.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, value.strip_prefix('+').unwrap_or(value)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(garbled());
    }
    if frac.len() > 6 || int.len() > 9 {
        return Err(garbled());
    }
    let int: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| garbled())?
    };
    let scale = 10i64.pow(frac.len() as u32);
    let frac: i64 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| garbled())?
    };
    // (int + frac/scale) * per_unit, rounded to the mg.
    let mg = int * per_unit + (frac * per_unit + scale / 2) / scale;
    Ok(if neg { -mg } else { mg })
}

/// Parses one reply line (without CR LF) to `cmd`.
pub fn parse(cmd: Command, line: &str) -> Result<Reply, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let garbled = || ParseError::Garbled(line.to_owned());
    if !line.is_ascii() || line.is_empty() {
        return Err(garbled());
    }
    match line.trim() {
        "ES" => return Ok(Reply::SyntaxError),
        "ET" => return Ok(Reply::TransmissionError),
        "EL" => return Ok(Reply::LogicalError),
        _ => {}
    }
    let mut parts = line.split_whitespace();
    let id = parts.next().ok_or_else(garbled)?;
    if !matches!(id, "S" | "SI" | "Z" | "T") {
        return Err(garbled());
    }
    let id = if id == "SI" { "S" } else { id };
    if id != cmd.reply_id() {
        return Err(ParseError::Unexpected {
            expected: cmd,
            got: line.to_owned(),
        });
    }
    let status = parts.next().ok_or_else(garbled)?;
    let rest: Vec<&str> = parts.collect();
    let weight = |rest: &[&str]| match rest {
        [value, unit] => milligrams(value, unit),
        _ => Err(garbled()),
    };
    match (id, status) {
        (_, "I") if rest.is_empty() => Ok(Reply::NotExecutable),
        (_, "+") if rest.is_empty() => Ok(Reply::Overload),
        (_, "-") if rest.is_empty() => Ok(Reply::Underload),
        ("S", "S") => Ok(Reply::Weight {
            stable: true,
            milligrams: weight(&rest)?,
        }),
        ("S", "D") => Ok(Reply::Weight {
            stable: false,
            milligrams: weight(&rest)?,
        }),
        ("Z", "A") if rest.is_empty() => Ok(Reply::Zeroed),
        ("T", "S") => Ok(Reply::Tared {
            milligrams: weight(&rest)?,
        }),
        _ => Err(garbled()),
    }
}

/// Formats a weight reply the way a scale sends it (for simulators).
pub fn format_weight(stable: bool, milligrams: i64) -> String {
    let grams = milligrams as f64 / 1000.0;
    format!("S {} {:>10.2} g\r\n", if stable { "S" } else { "D" }, grams)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_parse_to_milligrams() {
        assert_eq!(
            parse(Command::Stable, "S S     100.00 g"),
            Ok(Reply::Weight {
                stable: true,
                milligrams: 100_000
            })
        );
        assert_eq!(
            parse(Command::Immediate, "S D      99.50 g\r\n"),
            Ok(Reply::Weight {
                stable: false,
                milligrams: 99_500
            })
        );
        assert_eq!(
            parse(Command::Stable, "S S   1.2505 kg"),
            Ok(Reply::Weight {
                stable: true,
                milligrams: 1_250_500
            })
        );
        assert_eq!(
            parse(Command::Stable, "S S    -0.50 g"),
            Ok(Reply::Weight {
                stable: true,
                milligrams: -500
            })
        );
        assert_eq!(
            parse(Command::Tare, "T S      10.00 g"),
            Ok(Reply::Tared { milligrams: 10_000 })
        );
    }

    #[test]
    fn status_replies_parse() {
        assert_eq!(parse(Command::Stable, "S I"), Ok(Reply::NotExecutable));
        assert_eq!(parse(Command::Stable, "S +"), Ok(Reply::Overload));
        assert_eq!(parse(Command::Stable, "S -"), Ok(Reply::Underload));
        assert_eq!(parse(Command::Zero, "Z A"), Ok(Reply::Zeroed));
        assert_eq!(parse(Command::Zero, "ES"), Ok(Reply::SyntaxError));
        assert_eq!(parse(Command::Stable, "ET"), Ok(Reply::TransmissionError));
        assert_eq!(parse(Command::Tare, "EL"), Ok(Reply::LogicalError));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            "",
            "\u{1}\u{2}",
            "S S abc g",
            "S S 1.0",
            "Q Q",
            "S S 1.0 furlong",
            "S S 99999999999.0 g",
            "S X",
        ] {
            assert!(parse(Command::Stable, bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse(Command::Zero, "S S 1.00 g"),
            Err(ParseError::Unexpected { .. })
        ));
    }

    #[test]
    fn formatted_replies_parse_back() {
        let line = format_weight(true, 1_234_560);
        assert_eq!(
            parse(Command::Stable, &line),
            Ok(Reply::Weight {
                stable: true,
                milligrams: 1_234_560
            })
        );
    }
}
