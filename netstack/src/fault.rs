//! Fault injection requests: what can be injected into a NIC, and who may ask.
//!
//! Injection is compiled in and off by default. The boot option `faults=TOKEN` turns it on; every
//! request (console `fault TOKEN IFACE KIND`, HTTP `POST /fault`) must then carry the same token.
//! A request without it is refused and counted. The token is compared in constant time so that
//! response timing does not reveal how much of a guess was right.

use core::fmt;

/// A fault a NIC driver injects into its own device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The device stops completing transmissions (the seed's wedged controller).
    WedgeTx,
    /// The device stops completing receptions.
    WedgeRx,
    /// The next bulk completion reports a STALL.
    Stall,
    /// The controller's interrupts are lost for this many milliseconds.
    DropIrq { ms: u32 },
    /// The next `count` resets fail (to exercise retry with backoff).
    FailReset { count: u32 },
    /// Reset the interface now (an operator's manual reset).
    Reset,
}

/// Longest interrupt blackout accepted, ms.
pub const MAX_DROP_IRQ_MS: u32 = 60_000;
/// Most consecutive failing resets accepted.
pub const MAX_FAIL_RESETS: u32 = 10;

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::WedgeTx => f.write_str("wedge"),
            Fault::WedgeRx => f.write_str("wedge-rx"),
            Fault::Stall => f.write_str("stall"),
            Fault::DropIrq { ms } => write!(f, "drop-irq:{ms}"),
            Fault::FailReset { count } => write!(f, "fail-reset:{count}"),
            Fault::Reset => f.write_str("reset"),
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultError<'a> {
    /// Injection was not enabled at boot (`faults=TOKEN`).
    Disabled,
    /// The token is missing or wrong.
    BadToken,
    /// The fault is not one of the known kinds, or its argument is out of range.
    UnknownFault(&'a str),
    /// No such interface.
    NoInterface(&'a str),
    /// The interface's driver cannot inject this fault.
    Unsupported(&'static str),
}

impl fmt::Display for FaultError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultError::Disabled => {
                f.write_str("fault injection is off (boot with faults=TOKEN to enable it)")
            }
            FaultError::BadToken => f.write_str("refused: wrong or missing token"),
            FaultError::UnknownFault(kind) => write!(
                f,
                "unknown fault '{kind}' (wedge, wedge-rx, stall, drop-irq:MS up to {MAX_DROP_IRQ_MS}, \
                 fail-reset:N up to {MAX_FAIL_RESETS}, reset)"
            ),
            FaultError::NoInterface(name) => write!(f, "no interface '{name}'"),
            FaultError::Unsupported(why) => write!(f, "not supported: {why}"),
        }
    }
}

impl Fault {
    pub fn parse(text: &str) -> Result<Fault, FaultError<'_>> {
        let (kind, arg) = match text.split_once(':') {
            Some((kind, arg)) => (kind, Some(arg)),
            None => (text, None),
        };
        let number = |max: u32| {
            arg.and_then(|a| a.parse::<u32>().ok())
                .filter(|n| (1..=max).contains(n))
                .ok_or(FaultError::UnknownFault(text))
        };
        match (kind, arg) {
            ("wedge", None) => Ok(Fault::WedgeTx),
            ("wedge-rx", None) => Ok(Fault::WedgeRx),
            ("stall", None) => Ok(Fault::Stall),
            ("reset", None) => Ok(Fault::Reset),
            ("drop-irq", Some(_)) => Ok(Fault::DropIrq {
                ms: number(MAX_DROP_IRQ_MS)?,
            }),
            ("fail-reset", _) => Ok(Fault::FailReset {
                count: if arg.is_some() {
                    number(MAX_FAIL_RESETS)?
                } else {
                    1
                },
            }),
            _ => Err(FaultError::UnknownFault(text)),
        }
    }
}

/// Whether `given` is the boot-time token `expected` (None: injection is off). Constant time
/// in the length of `given` for a token of a given length.
pub fn check_token<'a>(expected: Option<&str>, given: &str) -> Result<(), FaultError<'a>> {
    let expected = expected.ok_or(FaultError::Disabled)?;
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut difference = (a.len() ^ b.len()) as u8 | u8::from(a.is_empty());
    for (i, byte) in b.iter().enumerate() {
        difference |= byte ^ a.get(i % a.len().max(1)).copied().unwrap_or(0);
    }
    if difference == 0 {
        Ok(())
    } else {
        Err(FaultError::BadToken)
    }
}

/// A request as the console and HTTP carry it: token, interface, fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultRequest<'a> {
    pub token: &'a str,
    pub interface: &'a str,
    pub fault: &'a str,
}

impl<'a> FaultRequest<'a> {
    /// Console form: `TOKEN IFACE KIND`.
    pub fn from_words(words: &'a str) -> Option<FaultRequest<'a>> {
        let mut it = words.split_whitespace();
        let request = FaultRequest {
            token: it.next()?,
            interface: it.next()?,
            fault: it.next()?,
        };
        it.next().is_none().then_some(request)
    }

    /// HTTP form body: `token=T&iface=eth0&fault=wedge` (any order; no percent-decoding is
    /// needed for these characters, and a `%` is refused rather than misread).
    pub fn from_form(body: &'a str) -> Option<FaultRequest<'a>> {
        let (mut token, mut interface, mut fault) = (None, None, None);
        for pair in body.trim_end_matches(['\r', '\n']).split('&') {
            let (key, value) = pair.split_once('=')?;
            if value.contains(['%', '+']) {
                return None;
            }
            let slot = match key {
                "token" => &mut token,
                "iface" => &mut interface,
                "fault" => &mut fault,
                _ => return None,
            };
            if slot.replace(value).is_some() {
                return None;
            }
        }
        Some(FaultRequest {
            token: token?,
            interface: interface?,
            fault: fault?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn parses_every_fault_and_rejects_bad_arguments() {
        assert_eq!(Fault::parse("wedge"), Ok(Fault::WedgeTx));
        assert_eq!(Fault::parse("wedge-rx"), Ok(Fault::WedgeRx));
        assert_eq!(Fault::parse("stall"), Ok(Fault::Stall));
        assert_eq!(Fault::parse("reset"), Ok(Fault::Reset));
        assert_eq!(Fault::parse("drop-irq:250"), Ok(Fault::DropIrq { ms: 250 }));
        assert_eq!(
            Fault::parse("fail-reset"),
            Ok(Fault::FailReset { count: 1 })
        );
        assert_eq!(
            Fault::parse("fail-reset:3"),
            Ok(Fault::FailReset { count: 3 })
        );
        for bad in [
            "",
            "wedge:1",
            "drop-irq",
            "drop-irq:0",
            "drop-irq:60001",
            "drop-irq:x",
            "fail-reset:11",
            "fail-reset:0",
            "melt",
        ] {
            assert_eq!(
                Fault::parse(bad),
                Err(FaultError::UnknownFault(bad)),
                "{bad}"
            );
        }
        for fault in [
            Fault::WedgeTx,
            Fault::WedgeRx,
            Fault::Stall,
            Fault::Reset,
            Fault::DropIrq { ms: 7 },
            Fault::FailReset { count: 2 },
        ] {
            assert_eq!(Fault::parse(&fault.to_string()), Ok(fault));
        }
    }

    #[test]
    fn tokens() {
        assert_eq!(check_token(None, "x"), Err(FaultError::Disabled));
        assert_eq!(check_token(Some("s3cret"), "s3cret"), Ok(()));
        for wrong in ["", "s3cre", "s3cret!", "S3cret", "s3cres", "xxxxxx"] {
            assert_eq!(
                check_token(Some("s3cret"), wrong),
                Err(FaultError::BadToken),
                "{wrong}"
            );
        }
        // An empty boot token never matches (not even an empty request).
        assert_eq!(check_token(Some(""), ""), Err(FaultError::BadToken));
    }

    #[test]
    fn requests_from_console_words_and_forms() {
        assert_eq!(
            FaultRequest::from_words("tok eth0 wedge"),
            Some(FaultRequest {
                token: "tok",
                interface: "eth0",
                fault: "wedge"
            })
        );
        assert_eq!(FaultRequest::from_words("tok eth0"), None);
        assert_eq!(FaultRequest::from_words("tok eth0 wedge extra"), None);
        assert_eq!(
            FaultRequest::from_form("fault=stall&iface=eth1&token=abc\r\n"),
            Some(FaultRequest {
                token: "abc",
                interface: "eth1",
                fault: "stall"
            })
        );
        for bad in [
            "fault=stall&iface=eth1",
            "token=a&token=b&iface=eth0&fault=stall",
            "token=a&iface=eth0&fault=stall&x=1",
            "token=a%20&iface=eth0&fault=stall",
            "garbage",
            "",
        ] {
            assert_eq!(FaultRequest::from_form(bad), None, "{bad}");
        }
        assert!(FaultError::BadToken.to_string().contains("token"));
        assert!(FaultError::Disabled.to_string().contains("faults=TOKEN"));
    }
}
