//! Networking: one thread per interface runs smoltcp over the NIC driver's queues and the
//! services. Addressing by DHCPv4 unless the command line gives the interface a static one
//! (`ip.eth1=`/`gw.eth1=`, or `ip=`/`gw=` for `eth0`; see `tether_netstack::addressing`).

mod device;
mod echo;
pub mod fault;
pub mod http;
mod iperf3;
pub mod nic;
pub mod ping;
pub mod service;
mod stream;

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicUsize, Ordering};

use tether_kcore::cmdline::Cmdline;
use tether_netstack::addressing::{self, Addressing};
use tether_netstack::services::Services;
use tether_netstack::smoltcp::iface::{Config, Interface, SocketSet};
use tether_netstack::smoltcp::socket::dhcpv4;
use tether_netstack::smoltcp::time::Instant;
use tether_netstack::smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};
use tether_netstack::watchdog::Policy;

use crate::sched::{Priority, Spawn};
use crate::sync::Mutex;
use crate::time;
use device::NicDevice;
pub use nic::{Nic, Transmit};
pub use tether_netstack::addressing::parse_ipv4;

static INTERFACES: Mutex<Vec<Arc<Nic>>> = Mutex::new("net.interfaces", Vec::new());
static NEXT_INDEX: AtomicUsize = AtomicUsize::new(0);

pub fn interfaces() -> Vec<Arc<Nic>> {
    INTERFACES.lock().clone()
}

/// Name for the next interface (`eth0`, `eth1`, ...).
pub fn next_name() -> String {
    format!("eth{}", NEXT_INDEX.fetch_add(1, Ordering::Relaxed))
}

fn start_thread(nic: Arc<Nic>) {
    let addressing = static_addressing(&crate::boot::state().cmdline, &nic.name);
    Spawn::new(format!("net-{}", nic.name))
        .priority(Priority::Driver)
        .start(move || run(nic, addressing));
}

/// Unplugged interfaces kept for their device's return, at most.
const MAX_WAITING_INTERFACES: usize = 4;

/// The interface for a device with this MAC: the one it had before it was unplugged (same
/// name, addresses and sockets, so TCP connections survive a replug), or a new one. The
/// driver then gives it a link with [`Nic::set_link`] and keeps its `tx_progress` counters.
pub fn attach_link(mac: [u8; 6], rx_limit: usize) -> Arc<Nic> {
    attach_link_as(None, mac, rx_limit)
}

/// [`attach_link`] for a NIC whose name was taken at probe (PCI NICs, see `virtio::start`):
/// only an interface of that name is taken over, and a new one gets it.
pub fn attach_link_named(name: String, mac: [u8; 6], rx_limit: usize) -> Arc<Nic> {
    attach_link_as(Some(name), mac, rx_limit)
}

fn attach_link_as(name: Option<String>, mac: [u8; 6], rx_limit: usize) -> Arc<Nic> {
    let mut interfaces = INTERFACES.lock();
    if let Some(nic) = interfaces.iter().find(|n| {
        n.mac == mac
            && name.as_ref().is_none_or(|name| n.name == *name)
            && !n.has_link()
            && !n.gone.load(Ordering::Acquire)
    }) {
        log::info!("{}: device back, interface kept", nic.name);
        return nic.clone();
    }
    // Interfaces kept for devices that have not come back: at most a few (a user trying one
    // dongle after another must not grow memory without bound); the oldest goes first.
    let waiting: Vec<Arc<Nic>> = interfaces
        .iter()
        .filter(|n| !n.has_link() && !n.gone.load(Ordering::Acquire))
        .cloned()
        .collect();
    if let Some(oldest) = waiting
        .first()
        .filter(|_| waiting.len() >= MAX_WAITING_INTERFACES)
    {
        log::info!("{}: removed (its device did not come back)", oldest.name);
        oldest.detach();
    }
    let name = name.unwrap_or_else(next_name);
    let nic = Nic::unlinked(name, mac, rx_limit, watchdog_policy());
    interfaces.push(nic.clone());
    drop(interfaces);
    start_thread(nic.clone());
    nic
}

/// `watchdog=` (default: progress with threshold 2).
pub fn watchdog_policy() -> Policy {
    let Ok(cmdline) = Cmdline::parse(&crate::boot::state().cmdline) else {
        return Policy::default();
    };
    match cmdline.get("watchdog").map(Policy::parse) {
        None => Policy::default(),
        Some(Ok(policy)) => policy,
        Some(Err(error)) => {
            log::warn!("{error}; using the default");
            Policy::default()
        }
    }
}

/// Default watchdog tick.
pub const WATCHDOG_INTERVAL_MS: u64 = 1000;

/// `watchdog_ms=` (100 to 60000), else a second.
pub fn watchdog_interval_us() -> u64 {
    let Ok(cmdline) = Cmdline::parse(&crate::boot::state().cmdline) else {
        return WATCHDOG_INTERVAL_MS * 1000;
    };
    match cmdline.get("watchdog_ms") {
        None => WATCHDOG_INTERVAL_MS * 1000,
        Some(text) => match text.parse::<u64>() {
            Ok(ms) if (100..=60_000).contains(&ms) => ms * 1000,
            _ => {
                log::warn!("watchdog_ms={text}: expected 100-60000; using {WATCHDOG_INTERVAL_MS}");
                WATCHDOG_INTERVAL_MS * 1000
            }
        },
    }
}

/// The static addressing the command line gives `interface`, or None for DHCP; bad values are
/// reported here.
fn static_addressing(cmdline: &str, interface: &str) -> Option<Addressing> {
    let cmdline = Cmdline::parse(cmdline).ok()?;
    let plan = addressing::plan_for(&cmdline, interface);
    for warning in &plan.warnings {
        log::warn!("{warning}");
    }
    plan.addressing
}

fn now() -> Instant {
    Instant::from_micros(time::now_us() as i64)
}

fn apply(iface: &mut Interface, addressing: &Addressing) {
    iface.update_ip_addrs(|addrs| {
        addrs.clear();
        let _ = addrs.push(IpCidr::new(
            IpAddress::Ipv4(addressing.ip),
            addressing.prefix,
        ));
    });
    iface.routes_mut().remove_default_ipv4_route();
    if let Some(gateway) = addressing.gateway {
        let _ = iface.routes_mut().add_default_ipv4_route(gateway);
    }
}

/// The line tests wait for: the interface has an address and serves.
fn announce(nic: &Nic, addressing: &Addressing, how: &'static str, services: Services) {
    *nic.address.lock() = Some((*addressing, how));
    log::info!(
        "{}: {how} {}/{} gateway {}; serving {services}",
        nic.name,
        addressing.ip,
        addressing.prefix,
        addressing
            .gateway
            .map_or_else(|| String::from("-"), |g| format!("{g}")),
    );
}

/// How long a new interface's thread waits for its driver's [`Nic::set_link`].
const LINK_WAIT_US: u64 = 1_000_000;

fn run(nic: Arc<Nic>, addressing: Option<Addressing>) {
    // The driver links a new interface just after `attach_link`: a frame sent before (the
    // first DHCP discover) would be dropped, and the DHCP client asks again only seconds later.
    let link_deadline = time::now_us() + LINK_WAIT_US;
    while !nic.has_link() && time::now_us() < link_deadline {
        nic.wake.down_timeout(10_000_000);
    }
    let mut device = NicDevice::new(&nic);
    let mut config = Config::new(EthernetAddress(nic.mac).into());
    config.random_seed = time::rdtsc();
    let mut iface = Interface::new(config, &mut device, now());
    let mut sockets = SocketSet::new(Vec::new());
    let enabled = service::enabled(&crate::boot::state().cmdline);
    let dhcp = match &addressing {
        Some(static_addressing) => {
            apply(&mut iface, static_addressing);
            announce(&nic, static_addressing, "static", enabled);
            None
        }
        None => Some(sockets.add(dhcpv4::Socket::new())),
    };
    let mut services = service::start(enabled, &mut sockets);
    let mut pinger = ping::Pinger::new(&mut sockets, &nic.name);
    let tick_us = watchdog_interval_us();
    let mut next_tick = time::now_us() + tick_us;
    while !nic.gone.load(Ordering::Acquire) {
        nic.counters.stack_passes.fetch_add(1, Ordering::Relaxed);
        iface.poll(now(), &mut device, &mut sockets);
        if let Some(handle) = dhcp {
            match sockets.get_mut::<dhcpv4::Socket>(handle).poll() {
                Some(dhcpv4::Event::Configured(config)) => {
                    let lease = Addressing {
                        ip: config.address.address(),
                        prefix: config.address.prefix_len(),
                        gateway: config.router,
                    };
                    apply(&mut iface, &lease);
                    announce(&nic, &lease, "DHCP lease", enabled);
                }
                Some(dhcpv4::Event::Deconfigured) => {
                    // smoltcp reports Deconfigured once at start too: only a lease we had
                    // can be lost.
                    if iface.ipv4_addr().is_some() {
                        log::info!("{}: DHCP lease lost", nic.name);
                    }
                    iface.update_ip_addrs(|addrs| addrs.clear());
                    *nic.address.lock() = None;
                    iface.routes_mut().remove_default_ipv4_route();
                }
                None => {}
            }
        }
        let moved = services
            .iter_mut()
            .fold(false, |moved, service| service.run(&mut sockets) | moved);
        let ping_due_us = pinger.run(&mut sockets);
        if moved {
            iface.poll(now(), &mut device, &mut sockets);
        }
        let now_us = time::now_us();
        if now_us >= next_tick {
            nic.watchdog_tick();
            next_tick = now_us + tick_us;
        }
        let delay_us = iface
            .poll_delay(now(), &sockets)
            .map_or(1_000_000, |d| d.total_micros())
            .min(next_tick.saturating_sub(time::now_us()))
            .min(ping_due_us.unwrap_or(u64::MAX));
        if delay_us > 0 {
            nic.wake.down_timeout(delay_us * 1000);
        }
    }
    INTERFACES.lock().retain(|n| !Arc::ptr_eq(n, &nic));
    log::info!("{}: interface gone", nic.name);
}
