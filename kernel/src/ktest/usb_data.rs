//! The bulk data path and its stall semantics, end to end on QEMU's usb-net (CDC-ECM) with user
//! networking: ICMP echo requests to the slirp gateway go out on bulk OUT, replies come back on
//! bulk IN where several transfers stay queued. A stall injected on bulk IN must fail every
//! queued transfer back, refuse submissions until `clear_halt`, and after resubmitting the
//! stream must carry on with every reply arriving exactly once and in order (lost replies are
//! asked for again, as TCP would).

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use tether_netstack::probe::{self, Peer};
use tether_netstack::smoltcp::wire::{EthernetAddress, Ipv4Address};
use tether_usb::host::TransferError;
use tether_usb::request::SetupPacket;
use tether_xhci::pipe::{EndpointConfig, Pipe, PipeKind, TransferHandle};

use super::{ensure, TestResult};
use crate::{time, usb};

const ECM_CONFIGURATION: u8 = 1;
const DATA_INTERFACE: u8 = 1;
const QUEUED_IN: usize = 4;
const IN_BUFFER: usize = 2048;
const PINGS: u16 = 40;
const STALL_AT: u16 = 15;
const IDENT: u16 = 0x7e7e;
const MS_US: u64 = 1000;

const ME: Peer = Peer {
    mac: EthernetAddress([0x52, 0x54, 0x00, 0x12, 0x34, 0x57]),
    ip: Ipv4Address::new(10, 0, 2, 15),
};
const GATEWAY_IP: Ipv4Address = Ipv4Address::new(10, 0, 2, 2);

fn transfer_error(what: &str) -> impl Fn(TransferError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Bulk IN with a fixed number of transfers always queued, completing in order.
struct Receiver {
    pipe: Pipe,
    queue: VecDeque<TransferHandle>,
}

impl Receiver {
    fn fill(&mut self) -> Result<(), String> {
        while self.queue.len() < QUEUED_IN {
            let buffer = self
                .pipe
                .alloc_buffer(IN_BUFFER)
                .map_err(transfer_error("IN buffer"))?;
            self.queue.push_back(
                self.pipe
                    .submit(buffer)
                    .map_err(transfer_error("IN submit"))?,
            );
        }
        Ok(())
    }

    /// The next completed frame, waiting up to `timeout_us`; None when nothing came.
    fn next_frame(&mut self, timeout_us: u64) -> Result<Option<Vec<u8>>, TransferError> {
        let Some(head) = self.queue.front() else {
            return Ok(None);
        };
        match head.poll_wait(timeout_us) {
            None => Ok(None),
            Some(result) => {
                let head = self.queue.pop_front().expect("head exists");
                let len = result?;
                let mut frame = alloc::vec![0u8; len];
                head.buffer().read(&mut frame);
                Ok(Some(frame))
            }
        }
    }
}

/// Starts USB with no class driver bound (the test drives the device itself), waits for
/// enumeration and returns QEMU's usb-net.
pub(super) fn usb_net_unbound() -> Result<usb::registry::DeviceRecord, String> {
    usb::driver::set_binding(false);
    usb::start();
    ensure!(
        usb::registry::wait_settled(30_000_000_000),
        "USB enumeration did not settle"
    );
    usb::registry::devices()
        .into_iter()
        .find(|d| d.vendor_id == 0x0525 && d.product_id == 0xa4a2)
        .ok_or_else(|| String::from("no usb-net device"))
}

pub fn usb_bulk_stall() -> TestResult {
    // This test drives the device's pipes itself.
    let record = usb_net_unbound()?;
    let controller = record.access.controller.clone();
    let device = record.access.device.clone();
    let mut hc = controller.clone();

    // Endpoints first (xHCI Configure Endpoint), then the device's configuration and the data
    // interface's alternate setting 1, which carries the bulk pair.
    let pipes = controller
        .configure_endpoints(
            device.handle,
            &[
                EndpointConfig {
                    address: 0x82,
                    kind: PipeKind::Bulk,
                    max_packet: 64,
                    interval: 0,
                    max_burst: 0,
                },
                EndpointConfig {
                    address: 0x02,
                    kind: PipeKind::Bulk,
                    max_packet: 64,
                    interval: 0,
                    max_burst: 0,
                },
            ],
        )
        .map_err(transfer_error("configure endpoints"))?;
    ensure!(pipes.len() == 2, "{} pipes configured", pipes.len());
    tether_usb::enumerate::set_configuration(&mut hc, &device, ECM_CONFIGURATION)
        .map_err(|e| format!("{e}"))?;
    hc.control_transfer(
        device.handle,
        SetupPacket::set_interface(DATA_INTERFACE, 1),
        &mut [],
        1000,
    )
    .map_err(transfer_error("SET_INTERFACE"))?;
    let (inp, out) = (pipes[0].clone(), pipes[1].clone());
    let mut rx = Receiver {
        pipe: inp.clone(),
        queue: VecDeque::new(),
    };
    rx.fill()?;

    // Learn the gateway's MAC.
    out.bulk_out(&probe::arp_request(ME.mac, ME.ip, GATEWAY_IP), 1000 * MS_US)
        .map_err(transfer_error("ARP out"))?;
    let deadline = time::now_us() + 5_000 * MS_US;
    let gateway_mac = loop {
        ensure!(time::now_us() < deadline, "no ARP reply from the gateway");
        if let Some(frame) = rx.next_frame(100 * MS_US).map_err(transfer_error("IN"))? {
            rx.fill()?;
            if let Some(mac) = probe::arp_reply_from(&frame, GATEWAY_IP) {
                break mac;
            }
        }
    };
    let gateway = Peer {
        mac: gateway_mac,
        ip: GATEWAY_IP,
    };

    let mut received: Vec<u16> = Vec::new();
    let mut stalled = false;
    let mut halted_failures = 0;
    let deadline = time::now_us() + 30_000 * MS_US;
    let mut next_to_send: u16 = 1;
    while received.len() < usize::from(PINGS) {
        ensure!(
            time::now_us() < deadline,
            "stream did not complete: got {:?}",
            received
        );
        // Send the next echo request, or repeat the oldest one not yet answered (TCP-like).
        let expected = received.last().map_or(1, |&s| s + 1);
        let seq = if next_to_send <= PINGS && next_to_send <= expected + 2 {
            next_to_send += 1;
            next_to_send - 1
        } else {
            expected
        };
        out.bulk_out(
            &probe::echo_request(ME, gateway, IDENT, seq, 56),
            1000 * MS_US,
        )
        .map_err(transfer_error("echo out"))?;
        if seq == STALL_AT && !stalled {
            inp.inject_stall_on_next_completion();
        }
        // Collect what arrives for a while.
        let until = time::now_us() + 50 * MS_US;
        while time::now_us() < until {
            match rx.next_frame(10 * MS_US) {
                Ok(Some(frame)) => {
                    rx.fill()?;
                    if let Some(s) = probe::echo_reply_seq(&frame, IDENT) {
                        ensure!(!received.contains(&s), "reply {s} delivered twice");
                        if s == received.last().map_or(1, |&l| l + 1) {
                            received.push(s);
                        }
                    }
                }
                Ok(None) => {}
                Err(TransferError::Stall) if !stalled => {
                    stalled = true;
                    // Everything queued behind the stalled transfer fails back with PipeHalted.
                    while let Some(handle) = rx.queue.pop_front() {
                        match handle.wait(1000 * MS_US) {
                            Err(TransferError::PipeHalted) => halted_failures += 1,
                            other => {
                                return Err(format!(
                                    "queued transfer after the stall ended {other:?}"
                                ))
                            }
                        }
                    }
                    ensure!(inp.is_halted(), "pipe not halted after a stall");
                    let refused = inp.alloc_buffer(IN_BUFFER).map(|b| inp.submit(b));
                    ensure!(
                        matches!(refused, Ok(Err(TransferError::PipeHalted))),
                        "a halted pipe accepted a submission"
                    );
                    inp.clear_halt().map_err(transfer_error("clear_halt"))?;
                    ensure!(!inp.is_halted(), "pipe still halted after clear_halt");
                    rx.fill()?;
                }
                Err(error) => return Err(format!("IN transfer failed: {error}")),
            }
        }
    }
    ensure!(stalled, "the injected stall never surfaced");
    ensure!(
        halted_failures == QUEUED_IN - 1,
        "{halted_failures} queued transfers failed back, expected {}",
        QUEUED_IN - 1
    );
    ensure!(
        received == (1..=PINGS).collect::<Vec<_>>(),
        "replies out of order: {:?}",
        received
    );
    let counters = inp.counters();
    ensure!(
        counters.stalls == 1,
        "bulk IN counted {} stalls",
        counters.stalls
    );
    kprintln!(
        "usb: bulk stream complete: {} replies in order after 1 stall, {} queued transfers failed back; bulk IN submitted {} completed {} errors {} bytes {}",
        received.len(),
        halted_failures,
        counters.submitted,
        counters.completed,
        counters.errors,
        counters.bytes
    );
    Ok(())
}
