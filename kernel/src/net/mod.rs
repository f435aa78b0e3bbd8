//! Networking: one thread per interface runs smoltcp over the NIC driver's queues and the
//! services. Addressing is static for now (`ip=`, `gw=` on the command line, QEMU user
//! networking's 10.0.2.15/24 via 10.0.2.2 by default); DHCP and the other services follow.

mod device;
mod echo;
pub mod nic;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use tether_kcore::cmdline::Cmdline;
use tether_netstack::smoltcp::iface::{Config, Interface, SocketSet};
use tether_netstack::smoltcp::time::Instant;
use tether_netstack::smoltcp::wire::{EthernetAddress, IpAddress, IpCidr, Ipv4Address};

use crate::sched::{Priority, Spawn};
use crate::sync::Mutex;
use crate::time;
use device::NicDevice;
pub use nic::{Nic, Transmit};

pub const ECHO_PORT: u16 = 7;

#[derive(Clone, Copy, Debug)]
pub struct Addressing {
    pub ip: Ipv4Address,
    pub prefix: u8,
    pub gateway: Option<Ipv4Address>,
}

fn parse_ipv4(text: &str) -> Option<Ipv4Address> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        *octet = parts.next()?.parse().ok()?;
    }
    parts
        .next()
        .is_none()
        .then(|| Ipv4Address::from_octets(octets))
}

/// `ip=A.B.C.D/N` and `gw=A.B.C.D`; a bad value is reported and the default kept.
pub fn addressing(cmdline: &str) -> Addressing {
    let mut addressing = Addressing {
        ip: Ipv4Address::new(10, 0, 2, 15),
        prefix: 24,
        gateway: Some(Ipv4Address::new(10, 0, 2, 2)),
    };
    let Ok(cmdline) = Cmdline::parse(cmdline) else {
        return addressing;
    };
    if let Some(ip) = cmdline.get("ip") {
        let (addr, prefix) = ip.split_once('/').unwrap_or((ip, "24"));
        match (
            parse_ipv4(addr),
            prefix.parse::<u8>().ok().filter(|p| *p <= 32),
        ) {
            (Some(addr), Some(prefix)) => {
                addressing.ip = addr;
                addressing.prefix = prefix;
            }
            _ => log::warn!(
                "ip={ip}: expected A.B.C.D/N; using {}/{}",
                addressing.ip,
                addressing.prefix
            ),
        }
    }
    if let Some(gw) = cmdline.get("gw") {
        match parse_ipv4(gw) {
            Some(addr) => addressing.gateway = Some(addr),
            None => log::warn!("gw={gw}: expected A.B.C.D"),
        }
    }
    addressing
}

static INTERFACES: Mutex<Vec<Arc<Nic>>> = Mutex::new("net.interfaces", Vec::new());
static NEXT_INDEX: AtomicUsize = AtomicUsize::new(0);

pub fn interfaces() -> Vec<Arc<Nic>> {
    INTERFACES.lock().clone()
}

/// Name for the next interface (`eth0`, `eth1`, ...).
pub fn next_name() -> String {
    format!("eth{}", NEXT_INDEX.fetch_add(1, Ordering::Relaxed))
}

/// A driver's new interface: starts its network thread.
pub fn attach(nic: Arc<Nic>) {
    INTERFACES.lock().push(nic.clone());
    let addressing = addressing(&crate::boot::state().cmdline);
    Spawn::new(format!("net-{}", nic.name))
        .priority(Priority::Driver)
        .start(move || run(nic, addressing));
}

fn now() -> Instant {
    Instant::from_micros(time::now_us() as i64)
}

fn run(nic: Arc<Nic>, addressing: Addressing) {
    let mut device = NicDevice { nic: &nic };
    let mut config = Config::new(EthernetAddress(nic.mac).into());
    config.random_seed = time::rdtsc();
    let mut iface = Interface::new(config, &mut device, now());
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(
            IpAddress::Ipv4(addressing.ip),
            addressing.prefix,
        ));
    });
    if let Some(gateway) = addressing.gateway {
        let _ = iface.routes_mut().add_default_ipv4_route(gateway);
    }
    let mut sockets = SocketSet::new(Vec::new());
    let mut echo = echo::EchoService::new(&mut sockets, ECHO_PORT, 4);
    log::info!(
        "{}: {}/{} gateway {} ; echo on tcp {}",
        nic.name,
        addressing.ip,
        addressing.prefix,
        addressing
            .gateway
            .map_or_else(|| String::from("-"), |g| format!("{g}")),
        ECHO_PORT
    );
    while !nic.gone.load(Ordering::Acquire) {
        iface.poll(now(), &mut device, &mut sockets);
        if echo.run(&mut sockets) {
            iface.poll(now(), &mut device, &mut sockets);
        }
        let delay_us = iface
            .poll_delay(now(), &sockets)
            .map_or(1_000_000, |d| d.total_micros())
            .min(1_000_000);
        if delay_us > 0 {
            nic.wake.down_timeout(delay_us * 1000);
        }
    }
    INTERFACES.lock().retain(|n| !Arc::ptr_eq(n, &nic));
    log::info!("{}: interface gone", nic.name);
}
