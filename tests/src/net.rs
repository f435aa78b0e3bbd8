//! Host-driven network tests: what the kernel prints when an interface is up, and the echo
//! test's parameters.

/// The line the network thread prints when its interface has an address and serves
/// (`eth0: DHCP lease ...; serving echo on tcp 7, ...`).
pub const INTERFACE_UP: &str = "; serving ";
/// One echo boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoBoot {
    /// Test name.
    pub name: &'static str,
    /// Kernel command line (chooses the USB network driver).
    pub cmdline: &'static str,
    /// What the driver prints once its transfers are queued: proof of which driver bound.
    pub driver_receiving: &'static str,
}

/// The echo test over CDC-ECM (the default) and over RNDIS (usb-net's other configuration).
pub const ECHO_BOOTS: &[EchoBoot] = &[
    EchoBoot {
        name: "net_echo",
        cmdline: "",
        driver_receiving: "cdc-ecm: receiving",
    },
    EchoBoot {
        name: "rndis_echo",
        cmdline: "usbnet=rndis",
        driver_receiving: "rndis: receiving",
    },
];
/// The console command showing the interface counters.
pub const IFCONFIG: &str = "ifconfig";
/// What `ifconfig` must show after the echo test: no received message failed the driver's
/// framing check.
pub const NO_MALFORMED: &str = ", 0 malformed";
/// Bytes of random data sent through echo and compared.
pub const ECHO_BYTES: usize = 4 << 20;
/// Guest ports of the echo, discard and chargen services.
pub const ECHO_PORT: u16 = 7;
/// Guest port of discard.
pub const DISCARD_PORT: u16 = 9;
/// Guest port of chargen.
pub const CHARGEN_PORT: u16 = 19;
/// What QEMU's user networking hands out by DHCP, as the kernel reports it.
pub const DHCP_LEASE: &str = "DHCP lease 10.0.2.15/24 gateway 10.0.2.2";
/// Bytes sent into discard and read from chargen.
pub const DISCARD_BYTES: usize = 1 << 20;
/// Bytes read from chargen and checked.
pub const CHARGEN_BYTES: usize = 64 * 1024;

/// QEMU arguments for a usb-net on qemu-xhci with user networking forwarding loopback ports
/// (echo, discard, chargen) to the guest's services.
pub fn echo_machine_args(ports: [u16; 3]) -> Vec<String> {
    let [echo, discard, chargen] = ports;
    vec![
        "-device".into(),
        "qemu-xhci,id=xhci".into(),
        "-netdev".into(),
        format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{echo}-:{ECHO_PORT},hostfwd=tcp:127.0.0.1:{discard}-:{DISCARD_PORT},hostfwd=tcp:127.0.0.1:{chargen}-:{CHARGEN_PORT}"
        ),
        "-device".into(),
        "usb-net,bus=xhci.0,netdev=n0".into(),
    ]
}

/// A network adapter of a test machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestNic {
    /// usb-net (CDC-ECM) on a qemu-xhci controller.
    UsbNet,
    /// QEMU's default virtio-net-pci: transitional, PCI ID 1af4:1000.
    VirtioTransitional,
    /// virtio-net-pci with `disable-legacy=on`: modern only, PCI ID 1af4:1041.
    VirtioModern,
}

/// One interface of a network boot test: its adapter and the start of the line the kernel must
/// announce for it (`eth0: DHCP lease ...`, followed by `; serving ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestInterface {
    /// The adapter.
    pub nic: TestNic,
    /// What its announcement line starts with.
    pub announces: &'static str,
}

/// A host-driven network boot: the machine's interfaces in the guest's naming order (virtio
/// first, then USB), each on its own user network with echo, discard and chargen forwarded,
/// and the kernel command line. The runner echoes [`ECHO_BYTES`] through every interface at
/// once and compares them byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetBoot {
    /// Test name (`net::NAME`).
    pub name: &'static str,
    /// Kernel command line.
    pub cmdline: &'static str,
    /// The interfaces.
    pub interfaces: &'static [TestInterface],
    /// Also push [`DISCARD_BYTES`] into discard and check [`CHARGEN_BYTES`] of chargen on the
    /// first interface.
    pub streams: bool,
}

/// The network boots besides [`ECHO_BOOTS`] (which keep [`echo_machine_args`]).
pub const NET_BOOTS: &[NetBoot] = &[
    // virtio-net alone, as QEMU makes it by default (the transitional ID): DHCP, echo, discard,
    // chargen.
    NetBoot {
        name: "virtio_echo",
        cmdline: "",
        interfaces: &[TestInterface {
            nic: TestNic::VirtioTransitional,
            announces: "eth0: DHCP lease 10.0.2.15/24 gateway 10.0.2.2",
        }],
        streams: true,
    },
    // Two interfaces at once: a modern-only virtio-net by DHCP and usb-net with a static
    // address of its own (ip.eth1=); echo through both at the same time.
    NetBoot {
        name: "two_nics_echo",
        cmdline: "ip.eth1=10.0.3.15/24 gw.eth1=10.0.3.2",
        interfaces: &[
            TestInterface {
                nic: TestNic::VirtioModern,
                announces: "eth0: DHCP lease 10.0.2.15/24 gateway 10.0.2.2",
            },
            TestInterface {
                nic: TestNic::UsbNet,
                announces: "eth1: static 10.0.3.15/24 gateway 10.0.3.2",
            },
        ],
        streams: false,
    },
    // Two usb-net on one controller, each on its network by DHCP. Which one is eth0 depends
    // on the order they attach, so the leases (one per network) tell them apart.
    NetBoot {
        name: "two_usb_nics_echo",
        cmdline: "",
        interfaces: &[
            TestInterface {
                nic: TestNic::UsbNet,
                announces: ": DHCP lease 10.0.2.15/24 gateway 10.0.2.2",
            },
            TestInterface {
                nic: TestNic::UsbNet,
                announces: ": DHCP lease 10.0.3.15/24 gateway 10.0.3.2",
            },
        ],
        streams: false,
    },
];

impl NetBoot {
    /// QEMU arguments: interface `i` on user network `n<i>` (10.0.(2+i).0/24), forwarding
    /// `ports[i]` (echo, discard, chargen) from loopback.
    pub fn machine_args(&self, ports: &[[u16; 3]]) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        if self.interfaces.iter().any(|i| i.nic == TestNic::UsbNet) {
            args.extend(["-device".into(), "qemu-xhci,id=xhci".into()]);
        }
        for (index, (interface, [echo, discard, chargen])) in
            self.interfaces.iter().zip(ports).enumerate()
        {
            let device = match interface.nic {
                TestNic::UsbNet => format!("usb-net,bus=xhci.0,netdev=n{index}"),
                TestNic::VirtioTransitional => format!("virtio-net-pci,netdev=n{index},romfile="),
                TestNic::VirtioModern => {
                    format!("virtio-net-pci,netdev=n{index},romfile=,disable-legacy=on")
                }
            };
            args.extend([
                "-netdev".into(),
                format!(
                    "user,id=n{index},net=10.0.{}.0/24,hostfwd=tcp:127.0.0.1:{echo}-:{ECHO_PORT},hostfwd=tcp:127.0.0.1:{discard}-:{DISCARD_PORT},hostfwd=tcp:127.0.0.1:{chargen}-:{CHARGEN_PORT}",
                    2 + index
                ),
                "-device".into(),
                device,
            ]);
        }
        args
    }

    /// The interface whose announcement `line` is, if any (by index).
    pub fn announced(&self, line: &str) -> Option<usize> {
        if !line.contains(INTERFACE_UP) {
            return None;
        }
        self.interfaces
            .iter()
            .position(|i| line.contains(i.announces))
    }
}

/// The console's counters of the first interface (`ifconfig`) and virtio device (`virtio`),
/// for the per-frame cost in a test summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VirtioCounters {
    /// Frames received (`ifconfig`'s `rx N frames`).
    pub rx_frames: u64,
    /// Frames sent (`tx N frames`).
    pub tx_frames: u64,
    /// Queue interrupts (`virtio`'s `N queue`).
    pub interrupts: u64,
    /// Receive-queue doorbells.
    pub rx_doorbells: u64,
    /// Transmit-queue doorbells.
    pub tx_doorbells: u64,
}

impl VirtioCounters {
    /// `0.030 interrupts, 1.01 doorbells per frame (8484 frames)`.
    pub fn per_frame(&self) -> String {
        let frames = self.rx_frames + self.tx_frames;
        let per_frame = |n: u64| n as f64 / frames.max(1) as f64;
        format!(
            "{:.3} interrupts, {:.2} doorbells per frame ({frames} frames)",
            per_frame(self.interrupts),
            per_frame(self.rx_doorbells + self.tx_doorbells),
        )
    }
}

/// The number just before `word` in `line` (` queue` in `...: 253 queue` gives 253).
pub fn number_before(line: &str, word: &str) -> Option<u64> {
    let end = line.find(word)?;
    line[..end]
        .trim_end()
        .rsplit([' ', ':'])
        .next()?
        .parse()
        .ok()
}

/// Reads the output of `ifconfig` then `virtio`: the counters of `interface` (`eth0`).
pub fn parse_virtio_counters(lines: &[String], interface: &str) -> Option<VirtioCounters> {
    // The lines after the first one starting with `start`, up to the next block's header.
    let block = |start: &str| -> Vec<&String> {
        lines
            .iter()
            .skip_while(|l| !l.starts_with(start))
            .skip(1)
            .take_while(|l| l.starts_with(' '))
            .collect()
    };
    let field = |block: &[&String], prefix: &str, word: &str| {
        block
            .iter()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| number_before(l, word))
    };
    let ifconfig = block(&format!("{interface}: mac "));
    let virtio_header = lines
        .iter()
        .find(|l| l.starts_with(&format!("{interface}: virtio-net ")))?;
    let virtio = block(&format!("{interface}: virtio-net "));
    Some(VirtioCounters {
        rx_frames: field(&ifconfig, "rx ", " frames")?,
        tx_frames: field(&ifconfig, "tx ", " frames")?,
        interrupts: number_before(virtio_header, " queue,")?,
        rx_doorbells: field(&virtio, "doorbells:", " receive")?,
        tx_doorbells: field(&virtio, "doorbells:", " transmit")?,
    })
}

/// RFC 864's pattern as the kernel sends it: 72 printable characters per line, each line
/// starting one character later, CR LF.
pub fn chargen_byte(position: usize) -> u8 {
    let (line, column) = (position / 74, position % 74);
    match column {
        72 => b'\r',
        73 => b'\n',
        _ => b' ' + ((line + column) % 95) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_each_service_port_on_loopback_only() {
        let args = echo_machine_args([40007, 40009, 40019]);
        let expected = "user,id=n0,hostfwd=tcp:127.0.0.1:40007-:7,hostfwd=tcp:127.0.0.1:40009-:9,hostfwd=tcp:127.0.0.1:40019-:19";
        assert!(args.iter().any(|a| a == expected));
    }

    #[test]
    fn echo_boots_differ_in_driver() {
        assert_eq!(ECHO_BOOTS[0].cmdline, "");
        assert!(ECHO_BOOTS
            .iter()
            .any(|b| b.cmdline == "usbnet=rndis" && b.driver_receiving.starts_with("rndis")));
        let mut names: Vec<_> = ECHO_BOOTS.iter().map(|b| b.name).collect();
        names.dedup();
        assert_eq!(names.len(), ECHO_BOOTS.len());
    }

    #[test]
    fn net_boots_give_each_interface_its_network_and_ports() {
        let two = NET_BOOTS
            .iter()
            .find(|b| b.name == "two_nics_echo")
            .unwrap();
        let args = two.machine_args(&[[1, 2, 3], [4, 5, 6]]);
        assert_eq!(
            args,
            [
                "-device",
                "qemu-xhci,id=xhci",
                "-netdev",
                "user,id=n0,net=10.0.2.0/24,hostfwd=tcp:127.0.0.1:1-:7,hostfwd=tcp:127.0.0.1:2-:9,hostfwd=tcp:127.0.0.1:3-:19",
                "-device",
                "virtio-net-pci,netdev=n0,romfile=,disable-legacy=on",
                "-netdev",
                "user,id=n1,net=10.0.3.0/24,hostfwd=tcp:127.0.0.1:4-:7,hostfwd=tcp:127.0.0.1:5-:9,hostfwd=tcp:127.0.0.1:6-:19",
                "-device",
                "usb-net,bus=xhci.0,netdev=n1",
            ]
        );
        let alone = NET_BOOTS.iter().find(|b| b.name == "virtio_echo").unwrap();
        let args = alone.machine_args(&[[1, 2, 3]]);
        assert!(args.contains(&"virtio-net-pci,netdev=n0,romfile=".to_string()));
        assert!(!args.iter().any(|a| a.contains("xhci")));
    }

    #[test]
    fn announcements_are_matched_to_their_interface() {
        let two = NET_BOOTS
            .iter()
            .find(|b| b.name == "two_nics_echo")
            .unwrap();
        let eth1 = "[    0.2] INFO  net: eth1: static 10.0.3.15/24 gateway 10.0.3.2; serving echo on tcp 7";
        let eth0 = "[    0.1] INFO  net: eth0: DHCP lease 10.0.2.15/24 gateway 10.0.2.2; serving echo on tcp 7";
        assert_eq!(two.announced(eth1), Some(1));
        assert_eq!(two.announced(eth0), Some(0));
        assert_eq!(
            two.announced("eth0: DHCP lease 10.0.2.15/24 gateway 10.0.2.2"),
            None
        );
        assert_eq!(
            two.announced("eth1: DHCP lease 10.0.3.15/24 gateway 10.0.3.2; serving echo"),
            None,
            "eth1 must be static"
        );
    }

    #[test]
    fn virtio_counters_from_the_console() {
        let lines: Vec<String> = [
            "tether> ifconfig",
            "eth1: mac 52:54:00:12:34:57 usb carrier up",
            "  inet 10.0.3.15/24 (static)",
            "  rx 7 frames 700 bytes, 0 dropped (queue full)",
            "  tx 8 frames 800 bytes, 0 dropped",
            "eth0: mac 52:54:00:12:34:56 virtio carrier up",
            "  inet 10.0.2.15/24 (DHCP)",
            "  rx 5572 frames 4496278 bytes, 0 dropped (queue full)",
            "  tx 2912 frames 4352056 bytes, 0 dropped",
            "tether> virtio",
            "eth0: virtio-net 0000:00:01.0 interrupts by MSI-X: 253 queue, 0 config",
            "  doorbells: 5700 receive, 2912 transmit (10 and 0 not needed, saved)",
            "  receive: 128 buffers posted, 0 frames too long for them",
        ]
        .iter()
        .map(|l| l.to_string())
        .collect();
        let counters = parse_virtio_counters(&lines, "eth0").unwrap();
        assert_eq!(
            counters,
            VirtioCounters {
                rx_frames: 5572,
                tx_frames: 2912,
                interrupts: 253,
                rx_doorbells: 5700,
                tx_doorbells: 2912
            }
        );
        assert_eq!(
            counters.per_frame(),
            "0.030 interrupts, 1.02 doorbells per frame (8484 frames)"
        );
        assert_eq!(
            parse_virtio_counters(&lines, "eth1"),
            None,
            "eth1 is no virtio"
        );
        assert_eq!(parse_virtio_counters(&lines[..10], "eth0"), None);
        assert_eq!(parse_virtio_counters(&lines[9..], "eth0"), None);
        assert_eq!(parse_virtio_counters(&[], "eth0"), None);
    }

    #[test]
    fn chargen_lines_rotate() {
        let first: Vec<u8> = (0..74).map(chargen_byte).collect();
        assert_eq!(&first[..3], b" !\"");
        assert_eq!(&first[72..], b"\r\n");
        assert_eq!(chargen_byte(74), b'!');
        assert!((0..74 * 200)
            .map(chargen_byte)
            .all(|b| b == b'\r' || b == b'\n' || (b' '..=b'~').contains(&b)));
    }
}
