//! The TCP services an interface runs, chosen by `services=` (all by default).

use alloc::boxed::Box;
use alloc::vec::Vec;

use tether_netstack::services::{ServiceKind, Services};
use tether_netstack::smoltcp::iface::SocketSet;

use super::{echo, http, iperf3, stream};

/// A service's socket work, done by the interface's network thread after each poll.
pub trait Service: Send {
    /// Moves data on the service's sockets. Returns whether anything moved (the thread then
    /// polls the interface again at once so the data leaves without waiting).
    fn run(&mut self, sockets: &mut SocketSet<'static>) -> bool;
}

/// The services `services=` enables; a bad value is reported and every service runs.
pub fn enabled(cmdline: &str) -> Services {
    let Ok(cmdline) = tether_kcore::cmdline::Cmdline::parse(cmdline) else {
        return Services::default();
    };
    match cmdline.get("services").map(Services::parse) {
        None => Services::default(),
        Some(Ok(services)) => services,
        Some(Err(error)) => {
            log::warn!("{error}; running all services");
            Services::default()
        }
    }
}

/// Creates the listening sockets of every enabled service.
pub fn start(services: Services, sockets: &mut SocketSet<'static>) -> Vec<Box<dyn Service>> {
    services
        .iter()
        .map(|kind| -> Box<dyn Service> {
            let port = kind.port();
            match kind {
                ServiceKind::Echo => Box::new(echo::EchoService::new(sockets, port, 4)),
                ServiceKind::Discard => Box::new(stream::StreamService::new(
                    sockets,
                    stream::Kind::Discard,
                    port,
                    2,
                )),
                ServiceKind::Chargen => Box::new(stream::StreamService::new(
                    sockets,
                    stream::Kind::Chargen,
                    port,
                    2,
                )),
                ServiceKind::Http => Box::new(http::HttpService::new(sockets, port)),
                ServiceKind::Iperf3 => Box::new(iperf3::Iperf3Service::new(sockets, port)),
            }
        })
        .collect()
}
