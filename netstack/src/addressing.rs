//! Each interface's addressing from the kernel command line: DHCPv4 unless a static address is
//! given for it.
//!
//! | key | meaning |
//! |---|---|
//! | `ip.IFACE=A.B.C.D/N` | static address of interface `IFACE` (`/N` defaults to `/24`) |
//! | `gw.IFACE=A.B.C.D` | its default route (only with a static address; must be on its subnet) |
//! | `ip.IFACE=dhcp` | DHCP for `IFACE` (the default; useful to override `ip=`) |
//! | `ip=`, `gw=` | the same for the first interface, `eth0` (the suffixed keys win) |
//!
//! `ip=` names only the first interface: the same address on two interfaces, which is what
//! "every interface" would mean, is never what anyone wants. Bad values are reported and the
//! interface falls back to DHCP (a bad gateway: no default route); nothing here panics.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use smoltcp::wire::Ipv4Address;
use tether_kcore::cmdline::Cmdline;

/// The interface the unsuffixed `ip=` and `gw=` keys configure.
pub const FIRST_INTERFACE: &str = "eth0";

/// A static IPv4 configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addressing {
    pub ip: Ipv4Address,
    pub prefix: u8,
    pub gateway: Option<Ipv4Address>,
}

/// What the command line asks for one interface, and what was wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct InterfacePlan {
    /// `None`: DHCP.
    pub addressing: Option<Addressing>,
    /// One line per rejected value, naming the key (for the boot log).
    pub warnings: Vec<String>,
}

/// `key.IFACE`, or for the first interface the bare `key`; the key that was used and its value.
fn lookup<'a>(cmdline: &Cmdline<'a>, key: &str, interface: &str) -> Option<(String, &'a str)> {
    let suffixed = format!("{key}.{interface}");
    if let Some(value) = cmdline.get(&suffixed) {
        return Some((suffixed, value));
    }
    if interface == FIRST_INTERFACE {
        return cmdline.get(key).map(|value| (String::from(key), value));
    }
    None
}

/// `A.B.C.D`, four decimal octets.
pub fn parse_ipv4(text: &str) -> Option<Ipv4Address> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        // u8::from_str takes a leading '+'; an address does not.
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts
        .next()
        .is_none()
        .then(|| Ipv4Address::from_octets(octets))
}

/// `A.B.C.D/N` (N 0-32, `/24` when left out) for an address an interface can own.
fn parse_cidr(text: &str) -> Option<(Ipv4Address, u8)> {
    let (address, prefix) = text.split_once('/').unwrap_or((text, "24"));
    let address = parse_ipv4(address)?;
    let prefix = Some(prefix)
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))?
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= 32)?;
    let own = !address.is_unspecified() && !address.is_multicast() && !address.is_broadcast();
    own.then_some((address, prefix))
}

fn same_subnet(a: Ipv4Address, b: Ipv4Address, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

/// The addressing of `interface` (`eth0`, `eth1`, ...) that `cmdline` asks for.
pub fn plan_for(cmdline: &Cmdline, interface: &str) -> InterfacePlan {
    let mut plan = InterfacePlan::default();
    let ip = lookup(cmdline, "ip", interface);
    let gw = lookup(cmdline, "gw", interface);
    let Some((ip_key, ip_value)) = ip else {
        if let Some((gw_key, _)) = gw {
            plan.warnings.push(format!(
                "{gw_key}: ignored, {interface} has no static address (ip.{interface}=A.B.C.D/N)"
            ));
        }
        return plan;
    };
    if ip_value.eq_ignore_ascii_case("dhcp") {
        if let Some((gw_key, _)) = gw {
            plan.warnings
                .push(format!("{gw_key}: ignored, {interface} uses DHCP"));
        }
        return plan;
    }
    let Some((address, prefix)) = parse_cidr(ip_value) else {
        plan.warnings.push(format!(
            "{ip_key}={ip_value}: expected a unicast A.B.C.D/N or dhcp; {interface} uses DHCP"
        ));
        return plan;
    };
    let gateway = gw.and_then(|(gw_key, gw_value)| match parse_ipv4(gw_value) {
        Some(gateway) if same_subnet(gateway, address, prefix) && gateway != address => {
            Some(gateway)
        }
        Some(_) => {
            plan.warnings.push(format!(
                "{gw_key}={gw_value}: not a neighbour on {address}/{prefix}; no default route"
            ));
            None
        }
        None => {
            plan.warnings.push(format!(
                "{gw_key}={gw_value}: expected A.B.C.D; no default route"
            ));
            None
        }
    });
    plan.addressing = Some(Addressing {
        ip: address,
        prefix,
        gateway,
    });
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(line: &str, interface: &str) -> InterfacePlan {
        plan_for(&Cmdline::parse(line).unwrap(), interface)
    }

    fn addr(a: u8, b: u8, c: u8, d: u8) -> Ipv4Address {
        Ipv4Address::new(a, b, c, d)
    }

    #[test]
    fn nothing_given_means_dhcp_everywhere() {
        for interface in ["eth0", "eth1", "eth7"] {
            assert_eq!(plan("", interface), InterfacePlan::default());
            assert_eq!(
                plan("log=debug services=all", interface),
                InterfacePlan::default()
            );
        }
    }

    #[test]
    fn per_interface_keys_configure_only_their_interface() {
        let line = "ip.eth1=10.0.3.15/24 gw.eth1=10.0.3.2";
        assert_eq!(plan(line, "eth0"), InterfacePlan::default());
        assert_eq!(
            plan(line, "eth1").addressing,
            Some(Addressing {
                ip: addr(10, 0, 3, 15),
                prefix: 24,
                gateway: Some(addr(10, 0, 3, 2)),
            })
        );
        assert!(plan(line, "eth1").warnings.is_empty());
        assert_eq!(plan(line, "eth2"), InterfacePlan::default());
    }

    #[test]
    fn bare_keys_are_the_first_interfaces() {
        let line = "ip=192.168.7.2/16 gw=192.168.0.1";
        let first = plan(line, "eth0").addressing.unwrap();
        assert_eq!(
            (first.ip, first.prefix, first.gateway),
            (addr(192, 168, 7, 2), 16, Some(addr(192, 168, 0, 1)))
        );
        assert_eq!(plan(line, "eth1"), InterfacePlan::default());
    }

    #[test]
    fn suffixed_keys_win_over_bare_ones_and_dhcp_overrides() {
        let line = "ip=10.0.2.20 ip.eth0=10.0.2.30/25 gw=10.0.2.2";
        let first = plan(line, "eth0").addressing.unwrap();
        assert_eq!((first.ip, first.prefix), (addr(10, 0, 2, 30), 25));
        assert_eq!(
            first.gateway,
            Some(addr(10, 0, 2, 2)),
            "bare gw still applies"
        );

        let dhcp = plan("ip=10.0.2.20 ip.eth0=DHCP", "eth0");
        assert_eq!(dhcp, InterfacePlan::default());
    }

    #[test]
    fn prefix_defaults_to_24_and_is_bounded() {
        assert_eq!(
            plan("ip.eth3=10.1.2.3", "eth3").addressing.unwrap().prefix,
            24
        );
        assert_eq!(
            plan("ip.eth3=10.1.2.3/32", "eth3")
                .addressing
                .unwrap()
                .prefix,
            32
        );
        assert_eq!(
            plan("ip.eth3=10.1.2.3/0", "eth3")
                .addressing
                .unwrap()
                .prefix,
            0
        );
        for bad in [
            "10.1.2.3/33",
            "10.1.2.3/",
            "10.1.2.3/+8",
            "10.1.2.3/-1",
            "10.1.2.3/8/8",
        ] {
            let p = plan(&format!("ip.eth3={bad}"), "eth3");
            assert_eq!(p.addressing, None, "{bad}");
            assert_eq!(p.warnings.len(), 1, "{bad}");
            assert!(
                p.warnings[0].starts_with(&format!("ip.eth3={bad}:")),
                "{:?}",
                p.warnings
            );
        }
    }

    #[test]
    fn bad_addresses_fall_back_to_dhcp_with_a_warning() {
        for bad in [
            "10.0.2",
            "10.0.2.15.1",
            "10.0.2.256",
            "a.b.c.d",
            "",
            "+1.2.3.4",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "10..2.15",
            "1.2.3.4 ",
        ] {
            let p = plan(&format!("ip.eth1=\"{bad}\""), "eth1");
            assert_eq!(p.addressing, None, "{bad:?}");
            assert!(p.warnings[0].contains("eth1 uses DHCP"), "{:?}", p.warnings);
        }
    }

    #[test]
    fn gateway_rules() {
        let bad = plan("ip.eth1=10.0.3.15/24 gw.eth1=10.0.4.1", "eth1");
        assert_eq!(bad.addressing.unwrap().gateway, None);
        assert!(bad.warnings[0].contains("not a neighbour on 10.0.3.15/24"));

        let junk = plan("ip.eth1=10.0.3.15/24 gw.eth1=router", "eth1");
        assert_eq!(junk.addressing.unwrap().ip, addr(10, 0, 3, 15));
        assert!(junk.warnings[0].starts_with("gw.eth1=router: expected A.B.C.D"));

        let itself = plan("ip.eth1=10.0.3.15/24 gw.eth1=10.0.3.15", "eth1");
        assert_eq!(itself.addressing.unwrap().gateway, None);

        let without_address = plan("gw.eth1=10.0.3.2", "eth1");
        assert_eq!(without_address.addressing, None);
        assert!(without_address.warnings[0].contains("no static address"));

        let with_dhcp = plan("ip.eth1=dhcp gw.eth1=10.0.3.2", "eth1");
        assert!(with_dhcp.warnings[0].contains("uses DHCP"));

        // /0: every address is a neighbour.
        let everything = plan("ip.eth1=10.0.3.15/0 gw.eth1=192.168.1.1", "eth1");
        assert_eq!(
            everything.addressing.unwrap().gateway,
            Some(addr(192, 168, 1, 1))
        );
    }

    #[test]
    fn fuzz_never_panics() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let alphabet = b"0123456789./ipgwdhcpeth=x ";
        for _ in 0..20_000 {
            let len = (state % 40) as usize;
            let text: String = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize] as char
                })
                .collect();
            if let Ok(cmdline) = Cmdline::parse(&text) {
                for interface in ["eth0", "eth1", ""] {
                    let _ = plan_for(&cmdline, interface);
                }
            }
            state = state.wrapping_add(1);
        }
    }
}
