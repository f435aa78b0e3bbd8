//! Trace levels 0-4, shared by the trace ring and the command-line level filter.

use core::fmt;

/// How important a trace record is; lower is more important.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    Error = 0,
    Warn = 1,
    Info = 2,
    Debug = 3,
    Trace = 4,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Error,
        Level::Warn,
        Level::Info,
        Level::Debug,
        Level::Trace,
    ];

    /// Accepts a name (`error`, `warn`/`warning`, `info`, `debug`, `trace`, any case) or a digit 0-4.
    pub fn parse(text: &str) -> Option<Level> {
        let text = text.trim();
        if let Ok(n) = text.parse::<u8>() {
            return Level::from_u8(n);
        }
        Level::ALL
            .into_iter()
            .find(|l| text.eq_ignore_ascii_case(l.name()))
            .or_else(|| text.eq_ignore_ascii_case("warning").then_some(Level::Warn))
    }

    pub fn from_u8(n: u8) -> Option<Level> {
        Level::ALL.get(usize::from(n)).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        }
    }

    /// Fixed-width upper-case tag for log lines.
    pub fn tag(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN ",
            Level::Info => "INFO ",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_digits_and_rejects_junk() {
        assert_eq!(Level::parse("TRACE"), Some(Level::Trace));
        assert_eq!(Level::parse("warning"), Some(Level::Warn));
        assert_eq!(Level::parse("0"), Some(Level::Error));
        assert_eq!(Level::parse("5"), None);
        assert_eq!(Level::parse("loud"), None);
        assert!(Level::Error < Level::Trace);
    }
}
