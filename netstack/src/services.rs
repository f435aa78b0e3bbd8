//! Which TCP services run, from the `services=` command-line key, and on which ports.
//!
//! `services=echo,discard,chargen,iperf3,http` (any subset, in any order), `all` or `none`.
//! Unknown names are an error naming the word, so a typo does not silently disable a service.

use core::fmt;

/// One TCP service of the appliance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    Echo,
    Discard,
    Chargen,
    Iperf3,
    Http,
}

impl ServiceKind {
    pub const ALL: [ServiceKind; 5] = [
        ServiceKind::Echo,
        ServiceKind::Discard,
        ServiceKind::Chargen,
        ServiceKind::Iperf3,
        ServiceKind::Http,
    ];

    /// The name used on the command line and in announcements.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Echo => "echo",
            ServiceKind::Discard => "discard",
            ServiceKind::Chargen => "chargen",
            ServiceKind::Iperf3 => "iperf3",
            ServiceKind::Http => "http",
        }
    }

    /// The well-known TCP port the service listens on.
    pub fn port(self) -> u16 {
        match self {
            ServiceKind::Echo => 7,
            ServiceKind::Discard => 9,
            ServiceKind::Chargen => 19,
            ServiceKind::Iperf3 => 5201,
            ServiceKind::Http => 80,
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of enabled services.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Services(u8);

/// A `services=` value that names something unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownService<'a>(pub &'a str);

impl fmt::Display for UnknownService<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "services: unknown service '{}' (known: echo, discard, chargen, iperf3, http, all, none)",
            self.0
        )
    }
}

impl Default for Services {
    fn default() -> Self {
        Services::all()
    }
}

impl Services {
    pub fn all() -> Services {
        ServiceKind::ALL
            .iter()
            .fold(Services::none(), |set, kind| set.with(*kind))
    }

    pub fn none() -> Services {
        Services(0)
    }

    pub fn with(self, kind: ServiceKind) -> Services {
        Services(self.0 | kind.bit())
    }

    pub fn contains(self, kind: ServiceKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// Enabled services in their fixed order.
    pub fn iter(self) -> impl Iterator<Item = ServiceKind> {
        ServiceKind::ALL
            .into_iter()
            .filter(move |kind| self.contains(*kind))
    }

    /// Parses a comma-separated list (`all`, `none`, or service names).
    pub fn parse(text: &str) -> Result<Services, UnknownService<'_>> {
        let mut set = Services::none();
        for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            set = match word {
                "all" => Services::all(),
                "none" => set,
                _ => set.with(
                    ServiceKind::ALL
                        .into_iter()
                        .find(|kind| kind.name() == word)
                        .ok_or(UnknownService(word))?,
                ),
            };
        }
        Ok(set)
    }
}

impl fmt::Display for Services {
    /// `echo on tcp 7, discard 9, ...`, or `no services`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for kind in self.iter() {
            if first {
                write!(f, "{} on tcp {}", kind.name(), kind.port())?;
                first = false;
            } else {
                write!(f, ", {} {}", kind.name(), kind.port())?;
            }
        }
        if first {
            f.write_str("no services")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn default_is_everything() {
        assert_eq!(Services::default(), Services::all());
        assert_eq!(Services::all().iter().count(), 5);
    }

    #[test]
    fn parses_lists_all_and_none() {
        let set = Services::parse("http, echo").unwrap();
        assert!(set.contains(ServiceKind::Http) && set.contains(ServiceKind::Echo));
        assert!(!set.contains(ServiceKind::Iperf3));
        assert_eq!(Services::parse("none").unwrap(), Services::none());
        assert_eq!(Services::parse("").unwrap(), Services::none());
        assert_eq!(Services::parse("all").unwrap(), Services::all());
    }

    #[test]
    fn unknown_names_are_reported() {
        let error = Services::parse("echo,iperf").unwrap_err();
        assert_eq!(error, UnknownService("iperf"));
        assert!(error.to_string().contains("'iperf'"));
    }

    #[test]
    fn announcement_lists_ports() {
        assert_eq!(
            Services::parse("echo,discard,chargen").unwrap().to_string(),
            "echo on tcp 7, discard 9, chargen 19"
        );
        assert_eq!(Services::none().to_string(), "no services");
    }
}
