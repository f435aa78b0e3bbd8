//! The network `tether run` gives the appliance: which NICs, which QEMU back-end, which host
//! ports reach its services, USB passthrough of a real dongle; and the lines telling the user
//! how to reach the services.

use crate::preset::{PortForward, Protocol};
use std::fmt::Write as _;

/// A service's guest port and the host port `tether run` forwards to it by default.
pub const DEFAULT_FORWARDS: &[(&str, u16, u16)] = &[
    ("iperf3", 5201, 5201),
    ("http", 80, 8080),
    ("echo", 7, 8007),
    ("discard", 9, 8009),
    ("chargen", 19, 8019),
];

/// How usb-net presents itself to the kernel's driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsbNetConfig {
    /// CDC-ECM (the default).
    #[default]
    Ecm,
    /// RNDIS (`usbnet=rndis` on the kernel command line).
    Rndis,
}

/// QEMU's side of the network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// User networking (slirp): the guest gets 10.0.2.15 by DHCP, ports are forwarded from
    /// 127.0.0.1.
    #[default]
    User,
    /// An existing tap device on the host (`ip tuntap add dev NAME mode tap user $USER`).
    Tap(String),
}

/// A real USB device passed through to the guest's xHCI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsbHost {
    /// By vendor and product id (QEMU waits for it if it is absent).
    Id {
        /// idVendor.
        vendor: u16,
        /// idProduct.
        product: u16,
    },
    /// By host bus and device address (must exist when QEMU starts).
    Address {
        /// Host bus number.
        bus: u8,
        /// Device address on that bus.
        address: u8,
    },
}

impl UsbHost {
    /// `VVVV:PPPP` (four hex digits each: vendor:product, as lsusb prints them) or `B:A`
    /// (decimal bus and address, at most three digits each, as `lsusb` lists `Bus B Device A`).
    pub fn parse(text: &str) -> Result<UsbHost, String> {
        let bad = || {
            format!(
                "--usb-host {text:?}: expected VENDOR:PRODUCT (hex, e.g. 0b95:1790) or BUS:ADDRESS (decimal, e.g. 1:5)"
            )
        };
        let (a, b) = text.split_once(':').ok_or_else(bad)?;
        if a.len() == 4 && b.len() == 4 {
            let vendor = u16::from_str_radix(a, 16).map_err(|_| bad())?;
            let product = u16::from_str_radix(b, 16).map_err(|_| bad())?;
            return Ok(UsbHost::Id { vendor, product });
        }
        let decimal = |s: &str| {
            (!s.is_empty() && s.len() <= 3 && s.bytes().all(|c| c.is_ascii_digit()))
                .then(|| s.parse::<u8>().ok())
                .flatten()
                .filter(|n| *n > 0)
        };
        match (decimal(a), decimal(b)) {
            (Some(bus), Some(address)) => Ok(UsbHost::Address { bus, address }),
            _ => Err(bad()),
        }
    }

    /// The `-device` value.
    pub fn device_arg(&self) -> String {
        match self {
            UsbHost::Id { vendor, product } => {
                format!("usb-host,bus=xhci.0,vendorid={vendor:#06x},productid={product:#06x}")
            }
            UsbHost::Address { bus, address } => {
                format!("usb-host,bus=xhci.0,hostbus={bus},hostaddr={address}")
            }
        }
    }
}

/// The appliance's network as `tether run` builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplianceNet {
    /// An emulated usb-net on qemu-xhci.
    pub usb_net: bool,
    /// ECM or RNDIS.
    pub usb_config: UsbNetConfig,
    /// An extra virtio-net-pci NIC (its own back-end of the same kind).
    pub virtio: bool,
    /// QEMU back-end of every NIC.
    pub backend: Backend,
    /// Host ports forwarded to the first NIC (user networking only).
    pub forwards: Vec<PortForward>,
    /// Real USB devices passed through.
    pub usb_host: Vec<UsbHost>,
}

impl Default for ApplianceNet {
    fn default() -> Self {
        ApplianceNet {
            usb_net: true,
            usb_config: UsbNetConfig::Ecm,
            virtio: false,
            backend: Backend::User,
            forwards: default_forwards(),
            usb_host: Vec::new(),
        }
    }
}

/// The services' default forwards.
pub fn default_forwards() -> Vec<PortForward> {
    DEFAULT_FORWARDS
        .iter()
        .map(|&(_, guest_port, host_port)| PortForward {
            protocol: Protocol::Tcp,
            host_port,
            guest_port,
        })
        .collect()
}

impl ApplianceNet {
    /// No network at all.
    pub fn none() -> Self {
        ApplianceNet {
            usb_net: false,
            virtio: false,
            forwards: Vec::new(),
            ..ApplianceNet::default()
        }
    }

    /// Whether any device is configured.
    pub fn is_empty(&self) -> bool {
        !self.usb_net && !self.virtio && self.usb_host.is_empty()
    }

    fn netdev(&self, id: &str, forwards: &[PortForward]) -> String {
        match &self.backend {
            Backend::User => {
                let mut netdev = format!("user,id={id}");
                for forward in forwards {
                    netdev.push(',');
                    netdev.push_str(&forward.hostfwd());
                }
                netdev
            }
            Backend::Tap(ifname) => format!("tap,id={id},ifname={ifname},script=no,downscript=no"),
        }
    }

    /// QEMU's arguments for these devices.
    pub fn qemu_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut nics = 0;
        let mut add_netdev = |args: &mut Vec<String>, device: String| {
            let id = format!("n{nics}");
            // Forwards go to the first NIC: a host port can be forwarded only once.
            let forwards = if nics == 0 { &self.forwards[..] } else { &[] };
            args.extend(["-netdev".to_string(), self.netdev(&id, forwards)]);
            args.extend(["-device".to_string(), format!("{device},netdev={id}")]);
            nics += 1;
        };
        if self.usb_net || !self.usb_host.is_empty() {
            args.extend(["-device".to_string(), "qemu-xhci,id=xhci".to_string()]);
        }
        if self.usb_net {
            add_netdev(&mut args, "usb-net,bus=xhci.0,id=usbnet0".to_string());
        }
        if self.virtio {
            add_netdev(&mut args, "virtio-net-pci,romfile=".to_string());
        }
        for host in &self.usb_host {
            args.extend(["-device".to_string(), host.device_arg()]);
        }
        args
    }

    /// Kernel command-line keys these devices need.
    pub fn kernel_keys(&self) -> Vec<String> {
        match self.usb_config {
            UsbNetConfig::Rndis => vec!["usbnet=rndis".to_string()],
            UsbNetConfig::Ecm => Vec::new(),
        }
    }

    /// What to tell the user before the console takes over the terminal.
    pub fn service_lines(&self) -> String {
        let mut out = String::new();
        if self.is_empty() {
            let _ = writeln!(out, "tether: no network device (--net none)");
            return out;
        }
        let port = |guest: u16| {
            self.forwards
                .iter()
                .find(|f| f.guest_port == guest && f.protocol == Protocol::Tcp)
                .map(|f| f.host_port)
        };
        match &self.backend {
            Backend::User => {
                let _ = writeln!(
                    out,
                    "tether: services, once the console shows `eth0: DHCP lease 10.0.2.15/24 ...`:"
                );
                if let Some(p) = port(5201) {
                    let _ = writeln!(
                        out,
                        "  iperf3 -c 127.0.0.1 -p {p}          # add -R for Tether -> host, -P 4 for 4 streams"
                    );
                }
                if let Some(p) = port(80) {
                    let _ = writeln!(
                        out,
                        "  curl http://127.0.0.1:{p}/          # also /metrics and /trace"
                    );
                }
                if let Some(p) = port(7) {
                    let _ = writeln!(out, "  nc 127.0.0.1 {p}                   # echo");
                }
                if let (Some(d), Some(c)) = (port(9), port(19)) {
                    let _ = writeln!(out, "  discard: 127.0.0.1:{d}, chargen: 127.0.0.1:{c}");
                }
                for forward in &self.forwards {
                    if !DEFAULT_FORWARDS.iter().any(|d| d.1 == forward.guest_port) {
                        let _ = writeln!(
                            out,
                            "  127.0.0.1:{} -> guest port {}",
                            forward.host_port, forward.guest_port
                        );
                    }
                }
            }
            Backend::Tap(ifname) => {
                let _ = writeln!(
                    out,
                    "tether: NIC on tap device {ifname}; services on the guest's address \
                     (DHCP, or --append 'ip=A.B.C.D/N gw=G'): iperf3 -c ADDR, curl http://ADDR/, \
                     echo 7, discard 9, chargen 19"
                );
            }
        }
        if !self.usb_host.is_empty() {
            let _ = writeln!(
                out,
                "tether: passing through {} USB device(s); QEMU needs read/write access to \
                 /dev/bus/usb/BBB/DDD (root or a udev rule)",
                self.usb_host.len()
            );
        }
        out
    }
}

/// `forwards` with every host port that is taken on 127.0.0.1 moved to a free one (the next
/// free port above it), so that QEMU does not refuse to start. Returns the moves made.
pub fn avoid_busy_ports(forwards: &mut [PortForward]) -> Vec<(u16, u16)> {
    let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    let mut moves = Vec::new();
    let mut taken: Vec<u16> = Vec::new();
    for forward in forwards.iter_mut() {
        if forward.protocol != Protocol::Tcp {
            continue;
        }
        let wanted = forward.host_port;
        let mut port = wanted;
        while taken.contains(&port) || !free(port) {
            port = match port.checked_add(1) {
                Some(p) => p,
                None => break,
            };
        }
        if port != wanted {
            moves.push((wanted, port));
            forward.host_port = port;
        }
        taken.push(port);
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn default_is_usb_net_on_user_networking_with_service_forwards() {
        let net = ApplianceNet::default();
        let args = net.qemu_args();
        assert!(has_pair(&args, "-device", "qemu-xhci,id=xhci"));
        assert!(has_pair(
            &args,
            "-device",
            "usb-net,bus=xhci.0,id=usbnet0,netdev=n0"
        ));
        assert!(has_pair(
            &args,
            "-netdev",
            "user,id=n0,hostfwd=tcp:127.0.0.1:5201-:5201,hostfwd=tcp:127.0.0.1:8080-:80,\
             hostfwd=tcp:127.0.0.1:8007-:7,hostfwd=tcp:127.0.0.1:8009-:9,hostfwd=tcp:127.0.0.1:8019-:19"
        ));
        assert!(net.kernel_keys().is_empty());
        let lines = net.service_lines();
        assert!(lines.contains("iperf3 -c 127.0.0.1 -p 5201"), "{lines}");
        assert!(lines.contains("curl http://127.0.0.1:8080/"), "{lines}");
        assert!(lines.contains("nc 127.0.0.1 8007"), "{lines}");
    }

    #[test]
    fn rndis_tap_virtio_and_passthrough() {
        let net = ApplianceNet {
            usb_config: UsbNetConfig::Rndis,
            virtio: true,
            backend: Backend::Tap("tether0".into()),
            usb_host: vec![UsbHost::parse("0b95:1790").unwrap()],
            ..ApplianceNet::default()
        };
        let args = net.qemu_args();
        assert!(has_pair(
            &args,
            "-netdev",
            "tap,id=n0,ifname=tether0,script=no,downscript=no"
        ));
        assert!(has_pair(
            &args,
            "-netdev",
            "tap,id=n1,ifname=tether0,script=no,downscript=no"
        ));
        assert!(has_pair(
            &args,
            "-device",
            "virtio-net-pci,romfile=,netdev=n1"
        ));
        assert!(has_pair(
            &args,
            "-device",
            "usb-host,bus=xhci.0,vendorid=0x0b95,productid=0x1790"
        ));
        assert_eq!(net.kernel_keys(), ["usbnet=rndis"]);
        assert!(net.service_lines().contains("tap device tether0"));
    }

    #[test]
    fn passthrough_alone_still_gets_a_controller() {
        let net = ApplianceNet {
            usb_net: false,
            usb_host: vec![UsbHost::parse("1:5").unwrap()],
            ..ApplianceNet::default()
        };
        let args = net.qemu_args();
        assert!(has_pair(&args, "-device", "qemu-xhci,id=xhci"));
        assert!(has_pair(
            &args,
            "-device",
            "usb-host,bus=xhci.0,hostbus=1,hostaddr=5"
        ));
        assert!(!args.iter().any(|a| a.starts_with("usb-net")));
    }

    #[test]
    fn usb_host_parsing() {
        assert_eq!(
            UsbHost::parse("0B95:1790"),
            Ok(UsbHost::Id {
                vendor: 0x0b95,
                product: 0x1790
            })
        );
        assert_eq!(
            UsbHost::parse("3:12"),
            Ok(UsbHost::Address {
                bus: 3,
                address: 12
            })
        );
        for bad in [
            "",
            "0b95",
            "0b95:17",
            "zzzz:1790",
            "0:5",
            "1:256",
            "1:",
            "1:5:6",
        ] {
            assert!(UsbHost::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn none_has_no_devices() {
        let net = ApplianceNet::none();
        assert!(net.is_empty());
        assert!(net.qemu_args().is_empty());
        assert!(net.service_lines().contains("no network"));
    }

    #[test]
    fn busy_host_ports_move_to_free_ones() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = holder.local_addr().unwrap().port();
        let mut forwards = vec![
            PortForward {
                protocol: Protocol::Tcp,
                host_port: busy,
                guest_port: 80,
            },
            PortForward {
                protocol: Protocol::Tcp,
                host_port: busy,
                guest_port: 7,
            },
        ];
        let moves = avoid_busy_ports(&mut forwards);
        assert_eq!(moves.len(), 2);
        assert!(forwards.iter().all(|f| f.host_port != busy));
        assert_ne!(forwards[0].host_port, forwards[1].host_port);
    }
}
