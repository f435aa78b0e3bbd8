//! The kernel command line (`key=value` and bare `key` words) and the `log=` level spec.

use crate::level::Level;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::str::FromStr;

/// What is wrong with a command line or level spec. Offsets are byte offsets into the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdlineError {
    /// `key="...` with no closing quote.
    UnterminatedQuote {
        key: String,
        offset: usize,
    },
    /// A `"` anywhere but at the start of a value.
    StrayQuote {
        word: String,
        offset: usize,
    },
    /// `key="quoted"more`: the closing quote must end the word.
    TextAfterQuote {
        key: String,
        offset: usize,
    },
    /// `=value` with nothing before the `=`.
    EmptyKey {
        offset: usize,
    },
    /// A bare `key` where a value is required.
    MissingValue {
        key: String,
    },
    InvalidBool {
        key: String,
        value: String,
    },
    InvalidNumber {
        key: String,
        value: String,
        expected: &'static str,
    },
    /// A level spec with no levels in it.
    EmptyLevelSpec,
    /// A level spec item whose level is not a level name or digit 0-4.
    InvalidLevel {
        spec: String,
        item: String,
    },
    /// `subsystem=` part of a level spec item is empty (`=debug`).
    EmptySubsystem {
        spec: String,
        item: String,
    },
    /// Two bare default levels in one spec (`info,warn`): ambiguous, so refused.
    DuplicateDefault {
        spec: String,
    },
}

impl fmt::Display for CmdlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CmdlineError::*;
        match self {
            UnterminatedQuote { key, offset } => write!(
                f,
                "command line: value of `{key}` opens a quote at byte {offset} that is never closed"
            ),
            StrayQuote { word, offset } => write!(
                f,
                "command line: unexpected `\"` at byte {offset} in `{word}` (quote whole values only: key=\"a b\")"
            ),
            TextAfterQuote { key, offset } => write!(
                f,
                "command line: text follows the closing quote of `{key}` at byte {offset}"
            ),
            EmptyKey { offset } => write!(f, "command line: `=` with no key at byte {offset}"),
            MissingValue { key } => write!(f, "command line: `{key}` needs a value (`{key}=...`)"),
            InvalidBool { key, value } => write!(
                f,
                "command line: `{key}={value}`: expected on/off, 1/0, yes/no or true/false"
            ),
            InvalidNumber {
                key,
                value,
                expected,
            } => write!(f, "command line: `{key}={value}`: expected a number ({expected})"),
            EmptyLevelSpec => f.write_str("log level spec is empty"),
            InvalidLevel { spec, item } => write!(
                f,
                "log level spec `{spec}`: `{item}` is not a level (error, warn, info, debug, trace or 0-4)"
            ),
            EmptySubsystem { spec, item } => write!(
                f,
                "log level spec `{spec}`: `{item}` has no subsystem before `=`"
            ),
            DuplicateDefault { spec } => write!(
                f,
                "log level spec `{spec}`: more than one default level"
            ),
        }
    }
}

/// A parsed command line borrowing from its text. Words keep their order; keys may repeat.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Cmdline<'a> {
    entries: Vec<(&'a str, Option<&'a str>)>,
}

impl<'a> Cmdline<'a> {
    /// Splits on whitespace into `key=value` or bare `key`. A value may be double-quoted to hold
    /// spaces (`banner="hello world"`); there are no escapes, so a value cannot contain `"`.
    pub fn parse(text: &'a str) -> Result<Cmdline<'a>, CmdlineError> {
        let is_space = |c: char| c.is_whitespace();
        let n = text.len();
        let mut entries = Vec::new();
        let mut i = 0;
        loop {
            i = text[i..].find(|c: char| !is_space(c)).map_or(n, |p| i + p);
            if i >= n {
                break;
            }
            let start = i;
            let word_end = text[i..].find(is_space).map_or(n, |p| i + p);
            i = text[i..]
                .find(|c: char| c == '=' || c == '"' || is_space(c))
                .map_or(n, |p| i + p);
            let key = &text[start..i];
            match text[i..].chars().next() {
                Some('"') => {
                    return Err(CmdlineError::StrayQuote {
                        word: text[start..word_end].to_string(),
                        offset: i,
                    })
                }
                Some('=') if key.is_empty() => return Err(CmdlineError::EmptyKey { offset: i }),
                Some('=') => {}
                _ => {
                    entries.push((key, None));
                    continue;
                }
            }
            i += 1; // past '='
            let value;
            if text[i..].starts_with('"') {
                let open = i;
                let body = i + 1;
                let close = text[body..].find('"').map(|p| body + p).ok_or_else(|| {
                    CmdlineError::UnterminatedQuote {
                        key: key.to_string(),
                        offset: open,
                    }
                })?;
                value = &text[body..close];
                i = close + 1;
                if !text[i..].chars().next().is_none_or(is_space) {
                    return Err(CmdlineError::TextAfterQuote {
                        key: key.to_string(),
                        offset: i,
                    });
                }
            } else {
                value = &text[i..word_end];
                if let Some(p) = value.find('"') {
                    return Err(CmdlineError::StrayQuote {
                        word: text[start..word_end].to_string(),
                        offset: i + p,
                    });
                }
                i = word_end;
            }
            entries.push((key, Some(value)));
        }
        Ok(Cmdline { entries })
    }

    /// The last occurrence of `key`: `None` if absent, `Some(None)` if it was bare.
    fn last(&self, key: &str) -> Option<Option<&'a str>> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|&(_, v)| v)
    }

    /// Whether `key` appears at all, bare or with a value.
    pub fn contains(&self, key: &str) -> bool {
        self.last(key).is_some()
    }

    /// Value of the last occurrence of `key` (`None` if absent or if that occurrence is bare).
    pub fn get(&self, key: &str) -> Option<&'a str> {
        self.last(key).flatten()
    }

    /// True for a bare `key` or a value of 1/on/yes/true (any case); false otherwise, even for
    /// junk values (use [`Cmdline::bool`] to report those).
    pub fn flag(&self, key: &str) -> bool {
        match self.last(key) {
            Some(None) => true,
            Some(Some(v)) => parse_bool(v) == Some(true),
            None => false,
        }
    }

    /// `Ok(None)` if absent; a bare `key` is true; otherwise on/off, 1/0, yes/no, true/false.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, CmdlineError> {
        match self.last(key) {
            None => Ok(None),
            Some(None) => Ok(Some(true)),
            Some(Some(v)) => parse_bool(v)
                .map(Some)
                .ok_or_else(|| CmdlineError::InvalidBool {
                    key: key.to_string(),
                    value: v.to_string(),
                }),
        }
    }

    /// `Ok(None)` if absent; parses with `FromStr`, also accepting `0x` hex for integer types.
    pub fn number<T: FromStr>(&self, key: &str) -> Result<Option<T>, CmdlineError> {
        let value = match self.last(key) {
            None => return Ok(None),
            Some(None) => {
                return Err(CmdlineError::MissingValue {
                    key: key.to_string(),
                })
            }
            Some(Some(v)) => v,
        };
        let err = || CmdlineError::InvalidNumber {
            key: key.to_string(),
            value: value.to_string(),
            expected: core::any::type_name::<T>(),
        };
        if let Ok(n) = value.parse::<T>() {
            return Ok(Some(n));
        }
        // `FromStr` has no radix, so hex goes via u128 and back through decimal text; the
        // target type still does its own range check.
        let hex = value
            .strip_prefix("0x")
            .or_else(|| value.strip_prefix("0X"))
            .ok_or_else(err)?;
        let n = u128::from_str_radix(hex, 16).map_err(|_| err())?;
        format!("{n}").parse::<T>().map(Some).map_err(|_| err())
    }

    /// Every word in order, duplicates included; bare keys have `None`.
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, Option<&'a str>)> + '_ {
        self.entries.iter().copied()
    }

    /// Keys not in `known`, each once, in order of first appearance (for a boot-time warning).
    /// A known entry `PREFIX.*` stands for every key `PREFIX.SUFFIX` with a non-empty suffix
    /// (per-interface keys such as `ip.eth1`).
    pub fn unknown_keys(&self, known: &[&str]) -> Vec<&'a str> {
        let is_known = |key: &str| {
            known.iter().any(|&k| match k.strip_suffix(".*") {
                Some(prefix) => key
                    .strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|suffix| !suffix.is_empty()),
                None => k == key,
            })
        };
        let mut out: Vec<&'a str> = Vec::new();
        for &(k, _) in &self.entries {
            if !is_known(k) && !out.contains(&k) {
                out.push(k);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    const TRUE: [&str; 4] = ["1", "on", "yes", "true"];
    const FALSE: [&str; 4] = ["0", "off", "no", "false"];
    if TRUE.iter().any(|t| v.eq_ignore_ascii_case(t)) {
        Some(true)
    } else if FALSE.iter().any(|t| v.eq_ignore_ascii_case(t)) {
        Some(false)
    } else {
        None
    }
}

/// `log=` value: a default level and per-subsystem overrides, e.g. `info`,
/// `warn,usb=trace,sched=debug`, `usb=4`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LevelSpec {
    pub default: Level,
    /// In order of first appearance; a repeated subsystem keeps its last level.
    pub overrides: Vec<(String, Level)>,
}

impl Default for LevelSpec {
    fn default() -> LevelSpec {
        LevelSpec {
            default: Level::Info,
            overrides: Vec::new(),
        }
    }
}

impl LevelSpec {
    /// Comma-separated items, each a level (the default) or `subsystem=level`; spaces around
    /// items and `=` are ignored, as are empty items. The default is Info when only overrides
    /// are given.
    pub fn parse(text: &str) -> Result<LevelSpec, CmdlineError> {
        let mut spec = LevelSpec::default();
        let mut have_default = false;
        let mut any = false;
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            any = true;
            let bad_level = || CmdlineError::InvalidLevel {
                spec: text.to_string(),
                item: item.to_string(),
            };
            match item.split_once('=') {
                Some((sub, level)) => {
                    let sub = sub.trim();
                    if sub.is_empty() {
                        return Err(CmdlineError::EmptySubsystem {
                            spec: text.to_string(),
                            item: item.to_string(),
                        });
                    }
                    let level = Level::parse(level).ok_or_else(bad_level)?;
                    match spec.overrides.iter_mut().find(|(s, _)| s == sub) {
                        Some(o) => o.1 = level,
                        None => spec.overrides.push((sub.to_string(), level)),
                    }
                }
                None => {
                    if have_default {
                        return Err(CmdlineError::DuplicateDefault {
                            spec: text.to_string(),
                        });
                    }
                    spec.default = Level::parse(item).ok_or_else(bad_level)?;
                    have_default = true;
                }
            }
        }
        if !any {
            return Err(CmdlineError::EmptyLevelSpec);
        }
        Ok(spec)
    }

    /// Exact subsystem match, else the longest override that is a `::`-prefix of it (`usb`
    /// matches `usb::xhci` but not `usbnet`), else the default.
    pub fn level_for(&self, subsystem: &str) -> Level {
        let mut best: Option<(usize, Level)> = None;
        for (name, level) in &self.overrides {
            if name == subsystem {
                return *level;
            }
            let is_prefix = subsystem
                .strip_prefix(name.as_str())
                .is_some_and(|rest| rest.starts_with("::"));
            if is_prefix && best.is_none_or(|(len, _)| name.len() > len) {
                best = Some((name.len(), *level));
            }
        }
        best.map_or(self.default, |(_, level)| level)
    }

    /// Most verbose level anywhere in the spec (for `log::set_max_level`).
    pub fn max_level(&self) -> Level {
        self.overrides
            .iter()
            .map(|&(_, l)| l)
            .fold(self.default, Level::max)
    }

    /// Whether a record at `level` from `subsystem` passes.
    pub fn enabled(&self, subsystem: &str, level: Level) -> bool {
        level <= self.level_for(subsystem)
    }
}

/// Prints the spec back in `parse` syntax, e.g. `warn,usb=trace`.
impl fmt::Display for LevelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.default)?;
        for (sub, level) in &self.overrides {
            write!(f, ",{sub}={level}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use std::string::ToString;

    fn words<'a>(c: &Cmdline<'a>) -> Vec<(&'a str, Option<&'a str>)> {
        c.iter().collect()
    }

    #[test]
    fn parses_keys_values_and_quotes() {
        let c = Cmdline::parse(
            "  console=ttyS0 quiet\tbanner=\"hello  world\" log=warn,usb=trace e= x=\"\"\n",
        )
        .unwrap();
        assert_eq!(
            words(&c),
            vec![
                ("console", Some("ttyS0")),
                ("quiet", None),
                ("banner", Some("hello  world")),
                ("log", Some("warn,usb=trace")),
                ("e", Some("")),
                ("x", Some("")),
            ]
        );
        assert_eq!(c.len(), 6);
        assert_eq!(c.get("banner"), Some("hello  world"));
        assert_eq!(c.get("quiet"), None);
        assert!(c.contains("quiet"));
        assert_eq!(c.get("missing"), None);
        assert!(!c.contains("missing"));
        // Only the first '=' splits.
        let c = Cmdline::parse("a=b=c").unwrap();
        assert_eq!(c.get("a"), Some("b=c"));
        // Non-ASCII text and whitespace are fine.
        let c = Cmdline::parse("name=grüße\u{3000}k=\"ä ö\"").unwrap();
        assert_eq!(words(&c), vec![("name", Some("grüße")), ("k", Some("ä ö"))]);
    }

    #[test]
    fn empty_and_blank_lines() {
        for text in ["", "   ", "\n\t "] {
            let c = Cmdline::parse(text).unwrap();
            assert!(c.is_empty());
            assert_eq!(c.unknown_keys(&[]), Vec::<&str>::new());
        }
    }

    #[test]
    fn quote_errors_name_key_and_offset() {
        let e = Cmdline::parse("a=1 banner=\"hello world").unwrap_err();
        assert_eq!(
            e,
            CmdlineError::UnterminatedQuote {
                key: "banner".into(),
                offset: 11
            }
        );
        assert!(e.to_string().contains("banner"));
        assert!(e.to_string().contains("11"));

        let e = Cmdline::parse("k=\"a\"b").unwrap_err();
        assert_eq!(
            e,
            CmdlineError::TextAfterQuote {
                key: "k".into(),
                offset: 5
            }
        );

        let e = Cmdline::parse("k=a\"b c\"").unwrap_err();
        assert_eq!(
            e,
            CmdlineError::StrayQuote {
                word: "k=a\"b".into(),
                offset: 3
            }
        );
        assert!(e.to_string().contains("k=a\"b"));

        let e = Cmdline::parse("\"k=v\"").unwrap_err();
        assert!(matches!(e, CmdlineError::StrayQuote { offset: 0, .. }));
        assert!(matches!(
            Cmdline::parse("ke\"y"),
            Err(CmdlineError::StrayQuote { offset: 2, .. })
        ));
        assert!(matches!(
            Cmdline::parse("k=\""),
            Err(CmdlineError::UnterminatedQuote { offset: 2, .. })
        ));

        let e = Cmdline::parse("a =b").unwrap_err();
        assert_eq!(e, CmdlineError::EmptyKey { offset: 2 });
        assert!(e.to_string().contains("byte 2"));
    }

    #[test]
    fn last_occurrence_wins() {
        let c = Cmdline::parse("log=info log=debug smp=2 smp quiet=0").unwrap();
        assert_eq!(c.get("log"), Some("debug"));
        assert_eq!(c.get("smp"), None); // last one is bare
        assert!(c.flag("smp"));
        assert!(!c.flag("quiet"));
        assert_eq!(c.bool("quiet"), Ok(Some(false)));
        assert_eq!(words(&c).len(), 5);
    }

    #[test]
    fn flags_and_bools() {
        let c =
            Cmdline::parse("a b=1 c=ON d=yes e=True f=0 g=off h=No i=false j=maybe k=").unwrap();
        for key in ["a", "b", "c", "d", "e"] {
            assert!(c.flag(key), "{key}");
            assert_eq!(c.bool(key), Ok(Some(true)), "{key}");
        }
        for key in ["f", "g", "h", "i"] {
            assert!(!c.flag(key), "{key}");
            assert_eq!(c.bool(key), Ok(Some(false)), "{key}");
        }
        assert!(!c.flag("j"));
        assert!(!c.flag("absent"));
        assert_eq!(c.bool("absent"), Ok(None));
        let e = c.bool("j").unwrap_err();
        assert_eq!(
            e,
            CmdlineError::InvalidBool {
                key: "j".into(),
                value: "maybe".into()
            }
        );
        assert!(e.to_string().contains("j=maybe"));
        assert!(matches!(c.bool("k"), Err(CmdlineError::InvalidBool { .. })));
    }

    #[test]
    fn numbers() {
        let c = Cmdline::parse("smp=4 mem=0x8000000 big=300 neg=-3 hex=0XfF bad=12ab bare bighex=0x1ffffffffffffffffffffffffffffffff f=1.5").unwrap();
        assert_eq!(c.number::<u32>("smp"), Ok(Some(4)));
        assert_eq!(c.number::<u64>("mem"), Ok(Some(0x800_0000)));
        assert_eq!(c.number::<u16>("hex"), Ok(Some(255)));
        assert_eq!(c.number::<i32>("neg"), Ok(Some(-3)));
        assert_eq!(c.number::<f32>("f"), Ok(Some(1.5)));
        assert_eq!(c.number::<u32>("absent"), Ok(None));
        let e = c.number::<u8>("big").unwrap_err();
        assert_eq!(
            e,
            CmdlineError::InvalidNumber {
                key: "big".into(),
                value: "300".into(),
                expected: "u8"
            }
        );
        assert!(e.to_string().contains("big=300"));
        assert!(e.to_string().contains("u8"));
        assert!(matches!(
            c.number::<u32>("neg"),
            Err(CmdlineError::InvalidNumber { .. })
        ));
        assert!(matches!(
            c.number::<u32>("bad"),
            Err(CmdlineError::InvalidNumber { .. })
        ));
        assert!(matches!(
            c.number::<u128>("bighex"),
            Err(CmdlineError::InvalidNumber { .. })
        ));
        assert_eq!(
            c.number::<u32>("bare"),
            Err(CmdlineError::MissingValue { key: "bare".into() })
        );
        assert!(c
            .number::<u32>("bare")
            .unwrap_err()
            .to_string()
            .contains("bare"));
    }

    #[test]
    fn unknown_keys_once_in_order() {
        let c = Cmdline::parse("/boot/kernel zz log=info aa zz=1 smp=2 aa").unwrap();
        assert_eq!(
            c.unknown_keys(&["log", "smp"]),
            vec!["/boot/kernel", "zz", "aa"]
        );
        assert_eq!(
            c.unknown_keys(&["log", "smp", "zz", "aa", "/boot/kernel"]),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn prefix_patterns_know_suffixed_keys() {
        let c = Cmdline::parse(
            "ip=10.0.2.15/24 ip.eth1=dhcp gw.eth1=10.0.3.2 ip. ipx.eth1=1 ip.eth1.x=2",
        )
        .unwrap();
        assert_eq!(
            c.unknown_keys(&["ip", "ip.*", "gw.*"]),
            vec!["ip.", "ipx.eth1"],
            "an empty suffix and another prefix are unknown; a dotted suffix is still a suffix"
        );
        assert_eq!(
            c.unknown_keys(&["ip.*"]),
            vec!["ip", "gw.eth1", "ip.", "ipx.eth1"]
        );
        assert_eq!(c.get("ip.eth1"), Some("dhcp"));
    }

    #[test]
    fn values_borrow_from_the_text() {
        let text = String::from("k=\"v w\"");
        let v = {
            let c = Cmdline::parse(&text).unwrap();
            c.get("k").unwrap()
        };
        assert_eq!(v, "v w");
    }

    #[test]
    fn level_spec_forms() {
        let s = LevelSpec::parse("info").unwrap();
        assert_eq!(
            s,
            LevelSpec {
                default: Level::Info,
                overrides: vec![]
            }
        );
        let s = LevelSpec::parse("warn,usb=trace,sched=debug").unwrap();
        assert_eq!(s.default, Level::Warn);
        assert_eq!(
            s.overrides,
            vec![("usb".into(), Level::Trace), ("sched".into(), Level::Debug)]
        );
        assert_eq!(s.to_string(), "warn,usb=trace,sched=debug");
        let s = LevelSpec::parse("usb=4").unwrap();
        assert_eq!(s.default, Level::Info);
        assert_eq!(s.level_for("usb"), Level::Trace);
        // Spaces, case, digits, empty items, repeated subsystem (last wins, first position kept).
        let s = LevelSpec::parse(" usb = DEBUG , 1 ,, net=0, usb=warning,").unwrap();
        assert_eq!(s.default, Level::Warn);
        assert_eq!(
            s.overrides,
            vec![("usb".into(), Level::Warn), ("net".into(), Level::Error)]
        );
    }

    #[test]
    fn level_spec_errors_name_the_item() {
        let e = LevelSpec::parse("warn,usb=loud").unwrap_err();
        assert_eq!(
            e,
            CmdlineError::InvalidLevel {
                spec: "warn,usb=loud".into(),
                item: "usb=loud".into()
            }
        );
        assert!(e.to_string().contains("usb=loud"));
        assert!(matches!(
            LevelSpec::parse("5"),
            Err(CmdlineError::InvalidLevel { .. })
        ));
        assert!(matches!(
            LevelSpec::parse("usb="),
            Err(CmdlineError::InvalidLevel { .. })
        ));
        assert!(matches!(
            LevelSpec::parse("=debug"),
            Err(CmdlineError::EmptySubsystem { .. })
        ));
        assert!(matches!(
            LevelSpec::parse("info,warn"),
            Err(CmdlineError::DuplicateDefault { .. })
        ));
        for empty in ["", " ", ",", " , ,"] {
            assert_eq!(LevelSpec::parse(empty), Err(CmdlineError::EmptyLevelSpec));
        }
    }

    #[test]
    fn level_for_prefix_rules() {
        let s = LevelSpec::parse("warn,usb=debug,usb::xhci=trace,net=error").unwrap();
        assert_eq!(s.level_for("usb"), Level::Debug);
        assert_eq!(s.level_for("usb::hub"), Level::Debug);
        assert_eq!(s.level_for("usb::xhci"), Level::Trace);
        assert_eq!(s.level_for("usb::xhci::ring"), Level::Trace); // longest prefix
        assert_eq!(s.level_for("usbnet"), Level::Warn); // not a `::` prefix
        assert_eq!(s.level_for("usb:"), Level::Warn);
        assert_eq!(s.level_for("net::tcp"), Level::Error);
        assert_eq!(s.level_for("sched"), Level::Warn);
        assert_eq!(s.level_for(""), Level::Warn);
        assert!(s.enabled("usb::xhci", Level::Trace));
        assert!(!s.enabled("net", Level::Warn));
        // Order of overrides does not matter for the longest match.
        let s = LevelSpec::parse("usb::xhci=trace,usb=error").unwrap();
        assert_eq!(s.level_for("usb::xhci::ring"), Level::Trace);
    }

    #[test]
    fn max_level_is_most_verbose() {
        assert_eq!(LevelSpec::parse("warn").unwrap().max_level(), Level::Warn);
        assert_eq!(
            LevelSpec::parse("error,usb=debug,net=info")
                .unwrap()
                .max_level(),
            Level::Debug
        );
        assert_eq!(
            LevelSpec::parse("trace,usb=error").unwrap().max_level(),
            Level::Trace
        );
        assert_eq!(LevelSpec::default().max_level(), Level::Info);
    }

    #[test]
    fn cmdline_feeds_level_spec() {
        let c = Cmdline::parse("console=ttyS0 log=\"warn, usb=trace\"").unwrap();
        let s = LevelSpec::parse(c.get("log").unwrap()).unwrap();
        assert_eq!(s.level_for("usb::xhci"), Level::Trace);
    }

    #[test]
    fn fuzz_never_panics() {
        // xorshift over an alphabet rich in the characters the parsers care about.
        const ALPHABET: &[char] = &[
            'a', 'b', 'u', 's', '=', '"', ' ', '\t', ',', ':', '1', '0', 'x', 'é', '\u{3000}', '\0',
        ];
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = next() % 24;
            let text: String = (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect();
            if let Ok(c) = Cmdline::parse(&text) {
                for (k, v) in c.iter() {
                    assert!(!k.is_empty());
                    assert!(!k.contains(['"', '=']) && !k.contains(char::is_whitespace));
                    let _ = (c.get(k), c.flag(k), c.bool(k), c.number::<u8>(k), v);
                }
                let _ = c.unknown_keys(&["a", "b"]);
            } else if let Err(e) = Cmdline::parse(&text) {
                let _ = e.to_string();
            }
            match LevelSpec::parse(&text) {
                Ok(s) => {
                    let _ = (s.level_for("us::b"), s.max_level());
                    // Display output parses back to the same spec.
                    assert_eq!(LevelSpec::parse(&s.to_string()), Ok(s));
                }
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    }
}
