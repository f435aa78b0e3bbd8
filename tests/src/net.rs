//! Host-driven network tests: what the kernel prints when an interface is up, and the echo
//! test's parameters.

/// The line the network thread prints when its interface serves (`eth0: ... echo on tcp 7`).
pub const INTERFACE_UP: &str = "echo on tcp 7";
/// Test name.
pub const ECHO_NAME: &str = "net_echo";
/// Bytes of random data sent through echo and compared.
pub const ECHO_BYTES: usize = 4 << 20;
/// Guest port of the echo service.
pub const ECHO_PORT: u16 = 7;

/// QEMU arguments for a usb-net on qemu-xhci with user networking forwarding `host_port` on
/// 127.0.0.1 to the guest's echo port.
pub fn echo_machine_args(host_port: u16) -> Vec<String> {
    vec![
        "-device".into(),
        "qemu-xhci,id=xhci".into(),
        "-netdev".into(),
        format!("user,id=n0,hostfwd=tcp:127.0.0.1:{host_port}-:{ECHO_PORT}"),
        "-device".into(),
        "usb-net,bus=xhci.0,netdev=n0".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_to_the_echo_port_on_loopback_only() {
        let args = echo_machine_args(40007);
        assert!(args
            .iter()
            .any(|a| a == "user,id=n0,hostfwd=tcp:127.0.0.1:40007-:7"));
    }
}
