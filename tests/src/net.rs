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
