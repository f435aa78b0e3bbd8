//! CDC-ECM: selects the ECM configuration and the data interface's alternate setting, reads the
//! MAC, keeps several bulk IN transfers queued (QEMU's usb-net holds a single received frame)
//! and the notification pipe armed, follows the carrier, and is a network interface: received
//! frames go to the stack's queue, frames to send go out on bulk OUT (with a zero-length packet
//! after a multiple of the endpoint's packet size, the ECM rule).

use alloc::collections::VecDeque;
use alloc::format;
use alloc::vec::Vec;

use tether_usb::cdc::{self, Notification};
use tether_usb::descriptor::class;
use tether_usb::descriptor::{Direction, MacAddress, TransferType};
use tether_usb::enumerate::{read_string, set_configuration, UsbDevice};
use tether_usb::host::TransferError;
use tether_usb::matching::{choose_configuration, is_ecm, ConfigPreference};
use tether_usb::request::SetupPacket;
use tether_xhci::pipe::{EndpointConfig, Pipe, PipeKind, TransferBuffer, TransferHandle};

use super::driver::{DeviceContext, UsbDriver};
use crate::net::{self, Nic, Transmit};
use crate::sync::Mutex;

const RX_QUEUED: usize = 4;
/// wMaxSegmentSize 1514 plus room; one frame per transfer.
const RX_BUFFER: usize = 2048;

/// Frames queued to the device and not yet completed, at most (the bounded TX queue).
const TX_IN_FLIGHT: usize = 32;
/// Every transmit buffer holds a full frame (wMaxSegmentSize 1514) and is reused.
const TX_BUFFER: usize = 2048;
/// Received frames waiting for the network thread, at most.
const RX_QUEUE: usize = 64;

/// The transmit side: bulk OUT transfers in flight, reaped as they complete.
struct EcmTx {
    pipe: Pipe,
    max_packet: usize,
    queue: Mutex<TxQueue>,
}

/// Transfers in flight, and buffers of completed ones kept for the next frames.
struct TxQueue {
    in_flight: VecDeque<TransferHandle>,
    spare: Vec<TransferBuffer>,
}

impl EcmTx {
    /// Drops completed transfers from the front; a failed one (counted by the pipe) that
    /// halted the pipe gets it cleared so sending resumes.
    fn reap(&self, queue: &mut TxQueue) {
        while let Some(result) = queue.in_flight.front().and_then(|h| h.try_result()) {
            let done = queue.in_flight.pop_front().expect("front exists");
            if queue.spare.len() < TX_IN_FLIGHT {
                queue.spare.push(done.buffer().with_len(TX_BUFFER));
            }
            if let Err(error) = result {
                if self.pipe.is_halted() && !matches!(error, TransferError::Disconnected) {
                    let _ = self.pipe.clear_halt();
                }
            }
        }
    }
}

impl EcmTx {
    /// A transmit buffer: a completed transfer's, or a new one.
    fn buffer(&self, queue: &mut TxQueue) -> Result<TransferBuffer, &'static str> {
        match queue.spare.pop() {
            Some(buffer) => Ok(buffer),
            None => self
                .pipe
                .alloc_buffer(TX_BUFFER)
                .map_err(|_| "no DMA memory"),
        }
    }
}

impl Transmit for EcmTx {
    fn transmit(&self, frame: &[u8]) -> Result<(), &'static str> {
        if frame.len() > TX_BUFFER {
            return Err("frame larger than the transmit buffers");
        }
        let mut queue = self.queue.lock();
        self.reap(&mut queue);
        if queue.in_flight.len() >= TX_IN_FLIGHT {
            // Full: wait (bounded) for the oldest transfer without holding the queue's lock.
            let oldest = queue.in_flight.pop_front().expect("the queue is full");
            drop(queue);
            oldest.poll_wait(100_000);
            queue = self.queue.lock();
            queue.in_flight.push_front(oldest);
            self.reap(&mut queue);
            if queue.in_flight.len() >= TX_IN_FLIGHT {
                return Err("transmit queue full");
            }
        }
        let buffer = self.buffer(&mut queue)?.with_len(frame.len());
        buffer.write(frame);
        let handle = self.pipe.submit(buffer).map_err(|_| "submit refused")?;
        queue.in_flight.push_back(handle);
        if frame.len().is_multiple_of(self.max_packet) {
            let zlp = self.buffer(&mut queue)?.with_len(0);
            let handle = self.pipe.submit(zlp).map_err(|_| "submit refused")?;
            queue.in_flight.push_back(handle);
        }
        Ok(())
    }
}

pub struct EcmDriver;

/// The pieces of an ECM function found in a configuration.
struct EcmLayout {
    configuration: u8,
    data_interface: u8,
    data_alt: u8,
    bulk_in: EndpointConfig,
    bulk_out: EndpointConfig,
    notify: Option<EndpointConfig>,
    mac_string: u8,
}

fn endpoint_config(ep: &tether_usb::descriptor::Endpoint, kind: PipeKind) -> EndpointConfig {
    EndpointConfig {
        address: ep.address,
        kind,
        max_packet: ep.max_packet_size(),
        interval: ep.interval,
        max_burst: 0,
    }
}

fn find_layout(device: &UsbDevice) -> Option<EcmLayout> {
    let value = choose_configuration(
        &device.descriptor,
        &device.configurations,
        ConfigPreference::Ecm,
    )?;
    let config = device.configuration(value)?;
    let comm = config
        .interfaces
        .iter()
        .flat_map(|i| i.alternates.iter())
        .find(|a| is_ecm(a))?;
    let (_, slaves) = comm.cdc_union()?;
    let data_number = *slaves.first()?;
    let data = config.interfaces.iter().find(|i| i.number == data_number)?;
    let data_alt = data
        .alternates
        .iter()
        .find(|a| a.class == class::CDC_DATA && a.endpoints.len() >= 2)?;
    let bulk_in = data_alt.find_endpoint(TransferType::Bulk, Direction::In)?;
    let bulk_out = data_alt.find_endpoint(TransferType::Bulk, Direction::Out)?;
    let notify = comm.find_endpoint(TransferType::Interrupt, Direction::In);
    Some(EcmLayout {
        configuration: value,
        data_interface: data_number,
        data_alt: data_alt.alt,
        bulk_in: endpoint_config(bulk_in, PipeKind::Bulk),
        bulk_out: endpoint_config(bulk_out, PipeKind::Bulk),
        notify: notify.map(|e| endpoint_config(e, PipeKind::Interrupt)),
        mac_string: comm.cdc_ethernet().map_or(0, |e| e.mac_string_index),
    })
}

impl UsbDriver for EcmDriver {
    fn name(&self) -> &'static str {
        "cdc-ecm"
    }

    fn matches(&self, device: &UsbDevice) -> bool {
        find_layout(device).is_some()
    }

    fn run(&self, ctx: &DeviceContext) {
        let mut nic = None;
        let result = attach_and_work(ctx, &mut nic);
        if let Some(nic) = nic {
            nic.detach();
        }
        if let Err(error) = result {
            if ctx.life.is_detached() {
                log::info!("{}: cdc-ecm: stopped: device gone ({error})", ctx.name);
            } else {
                log::warn!("{}: cdc-ecm: {error}", ctx.name);
                // Nothing more to do with this device until it goes away.
                ctx.life.wait_detached(None);
            }
        }
    }
}

fn attach_and_work(
    ctx: &DeviceContext,
    nic_slot: &mut Option<alloc::sync::Arc<Nic>>,
) -> Result<(), alloc::string::String> {
    let layout = find_layout(&ctx.device).ok_or("no ECM function")?;
    let mut hc = ctx.controller.clone();
    let mut endpoints = alloc::vec![layout.bulk_in, layout.bulk_out];
    endpoints.extend(layout.notify);
    let pipes = ctx
        .controller
        .configure_endpoints(ctx.device.handle, &endpoints)
        .map_err(|e| format!("configure endpoints: {e}"))?;
    set_configuration(&mut hc, &ctx.device, layout.configuration).map_err(|e| format!("{e}"))?;
    hc.control_transfer(
        ctx.device.handle,
        SetupPacket::set_interface(layout.data_interface, layout.data_alt),
        &mut [],
        1000,
    )
    .map_err(|e| format!("SET_INTERFACE: {e}"))?;
    let mac = read_string(
        &mut hc,
        ctx.device.handle,
        layout.mac_string,
        ctx.device.language.unwrap_or(0x0409),
    )
    .and_then(|s| MacAddress::parse_from_string_descriptor(&s).ok());
    log::info!(
        "{}: cdc-ecm: configuration {}, data interface {} alt {}, MAC {}",
        ctx.name,
        layout.configuration,
        layout.data_interface,
        layout.data_alt,
        mac.map_or_else(
            || alloc::string::String::from("unknown"),
            |m| format!("{m}")
        )
    );
    let bulk_in = pipes[0].clone();
    let tx = alloc::sync::Arc::new(EcmTx {
        pipe: pipes[1].clone(),
        max_packet: usize::from(layout.bulk_out.max_packet.max(1)),
        queue: Mutex::new(
            "ecm.tx",
            TxQueue {
                in_flight: VecDeque::new(),
                spare: Vec::new(),
            },
        ),
    });
    let nic = Nic::new(
        net::next_name(),
        mac.map_or([0x52, 0x54, 0, 0x12, 0x34, 0x56], |m| m.0),
        RX_QUEUE,
        tx,
    );
    *nic_slot = Some(nic.clone());
    net::attach(nic.clone());
    let notify = pipes.get(2).cloned();
    let mut rx: VecDeque<TransferHandle> = VecDeque::new();
    let mut notification: Option<TransferHandle> = None;
    let mut carrier = false;
    let mut rx_spare: Vec<TransferBuffer> = Vec::new();
    refill(&bulk_in, &mut rx, &mut rx_spare)?;
    // The hotplug test waits for this line: from here on transfers are in flight.
    log::info!(
        "{}: cdc-ecm: receiving ({} transfers queued)",
        ctx.name,
        rx.len()
    );
    loop {
        refill(&bulk_in, &mut rx, &mut rx_spare)?;
        if notification.is_none() {
            if let Some(pipe) = &notify {
                notification = Some(
                    pipe.submit(pipe.alloc_buffer(16).map_err(|e| format!("{e}"))?)
                        .map_err(|e| format!("{e}"))?,
                );
            }
        }
        // Wait for the oldest receive (completions come in order), checking the notification
        // pipe and the device's life every 100 ms.
        if let Some(head) = rx.front() {
            if let Some(result) = head.poll_wait(100_000) {
                let head = rx.pop_front().expect("head exists");
                match result {
                    Ok(len) => {
                        let mut frame = alloc::vec![0u8; len];
                        head.buffer().read(&mut frame);
                        nic.deliver(frame);
                        rx_spare.push(head.buffer().with_len(RX_BUFFER));
                    }
                    Err(TransferError::Disconnected) => return Err("device gone".into()),
                    Err(error) => recover(&bulk_in, &mut rx, error)?,
                }
            }
        }
        if let Some(result) = notification.as_ref().and_then(|h| h.try_result()) {
            let handle = notification.take().expect("checked above");
            match result {
                Ok(len) => {
                    let mut bytes = [0u8; 16];
                    let len = len.min(bytes.len());
                    handle.buffer().read(&mut bytes[..len]);
                    match cdc::parse_notification(&bytes[..len]) {
                        Ok(Notification::NetworkConnection(up)) if up != carrier => {
                            carrier = up;
                            nic.set_carrier(up);
                            log::info!(
                                "{}: cdc-ecm: carrier {}",
                                ctx.name,
                                if up { "up" } else { "down" }
                            );
                        }
                        Ok(Notification::SpeedChange {
                            downstream,
                            upstream,
                        }) => {
                            log::debug!("{}: cdc-ecm: link {downstream}/{upstream} bit/s", ctx.name)
                        }
                        Ok(_) => {}
                        Err(error) => log::debug!("{}: cdc-ecm: {error}", ctx.name),
                    }
                }
                Err(TransferError::Disconnected) => return Err("device gone".into()),
                Err(error) => {
                    log::debug!("{}: cdc-ecm: notification pipe: {error}", ctx.name);
                    if let Some(pipe) = &notify {
                        pipe.clear_halt()
                            .map_err(|e| format!("notification clear_halt: {e}"))?;
                    }
                }
            }
        }
        if ctx.life.is_detached() {
            return Ok(());
        }
    }
}

/// Tops the receive queue up to [`RX_QUEUED`], reusing completed transfers' buffers first.
fn refill(
    pipe: &Pipe,
    rx: &mut VecDeque<TransferHandle>,
    spare: &mut Vec<TransferBuffer>,
) -> Result<(), alloc::string::String> {
    while rx.len() < RX_QUEUED {
        let buffer = match spare.pop() {
            Some(buffer) => buffer,
            None => pipe
                .alloc_buffer(RX_BUFFER)
                .map_err(|e| format!("RX buffer: {e}"))?,
        };
        match pipe.submit(buffer) {
            Ok(handle) => rx.push_back(handle),
            Err(TransferError::Disconnected) => return Err("device gone".into()),
            Err(error) => return Err(format!("RX submit: {error}")),
        }
    }
    Ok(())
}

/// A receive failed: the pipe halted; what was queued behind fails back with PipeHalted.
/// Drain it, clear the halt, and carry on (frames in between are lost; TCP resends).
fn recover(
    pipe: &Pipe,
    rx: &mut VecDeque<TransferHandle>,
    error: TransferError,
) -> Result<(), alloc::string::String> {
    log::warn!("cdc-ecm: receive failed ({error}); clearing the halt");
    while let Some(handle) = rx.pop_front() {
        let _ = handle.wait(1_000_000);
    }
    pipe.clear_halt().map_err(|e| format!("clear_halt: {e}"))
}
