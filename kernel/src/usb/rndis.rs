//! RNDIS (Remote NDIS over USB), bound instead of CDC-ECM on devices offering both when the
//! command line says `usbnet=rndis`, and on devices offering only RNDIS. The protocol logic is
//! `tether_usb::rndis` and the control channel `tether_usb::rndis_channel` (host-tested); this
//! is their I/O.
//!
//! Control: messages go out with SEND_ENCAPSULATED_COMMAND and their completions come back
//! with GET_ENCAPSULATED_RESPONSE. The device is meant to announce each response on its
//! interrupt endpoint (RESPONSE_AVAILABLE), but QEMU's never completes, so responses are
//! polled for with a bounded back-off; a completed interrupt transfer only makes the driver
//! read early. INITIALIZE → QUERY MAC → QUERY max frame → SET packet filter, then the link
//! state is queried. Afterwards a host KEEPALIVE goes out after
//! [`KEEPALIVE_IDLE_US`](tether_usb::rndis_channel::KEEPALIVE_IDLE_US) without a word from
//! the device on either channel, and a device's KEEPALIVE is answered.
//!
//! Data: every frame is one REMOTE_NDIS_PACKET_MSG in one bulk-OUT transfer, never padded (a
//! multiple of 64 bytes ends with a zero-length packet: QEMU 7.2 keeps padding bytes and loses
//! every later frame). Every received transfer is walked message by message; a message with a
//! bad length, offset or type is dropped and counted (`ifconfig`'s `malformed`, and a trace
//! line), never trusted.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use tether_usb::descriptor::MacAddress;
use tether_usb::enumerate::{set_configuration, UsbDevice};
use tether_usb::host::{DeviceHandle, TransferError};
use tether_usb::matching::{choose_configuration, ConfigPreference, NetFunction};
use tether_usb::request::SetupPacket;
use tether_usb::rndis::{
    encode_packet, find_interfaces, receive_transfer, DeviceInfo, RndisInterfaces, RndisRxStats,
    RndisSession,
};
use tether_usb::rndis_channel::{ControlChannel, ControlTransport};
use tether_xhci::pipe::{Pipe, PipeKind};

use super::bulknic::{self, endpoint_config, BulkRx, BulkTx, ClassDataPath, TxFraming};
use super::driver::{DeviceContext, UsbDriver};
use super::Xhci;
use crate::net::{self, Nic};
use crate::{sched, time};

/// Bulk IN buffer: the MaxTransferSize the host offers in INITIALIZE, so a device batching
/// several messages per transfer stays within it (QEMU sends one, at most 1558 bytes).
pub const RX_BUFFER: usize = 2048;
/// Bulk OUT buffer: a header plus the longest frame.
pub const TX_BUFFER: usize = 2048;
/// EP0 timeout of one control transfer.
const CONTROL_TIMEOUT_MS: u32 = 1000;
/// Malformed messages each get a warning up to this many; after that every power of two.
const MALFORMED_WARNINGS: u64 = 5;

pub struct RndisDriver;

impl UsbDriver for RndisDriver {
    fn name(&self) -> &'static str {
        "rndis"
    }

    fn matches(&self, device: &UsbDevice) -> bool {
        matches!(
            super::driver::net_function_for(device),
            Some((NetFunction::Rndis, value))
                if device.configuration(value).and_then(find_interfaces).is_some()
        )
    }

    fn run(&self, ctx: &DeviceContext) {
        bulknic::run_nic_driver(ctx, self.name(), |nic| attach_and_work(ctx, nic));
    }
}

/// The control channel's transport: CDC encapsulated commands on EP0.
pub struct Ep0 {
    hc: Xhci,
    device: DeviceHandle,
    interface: u8,
}

impl ControlTransport for Ep0 {
    fn send(&mut self, message: &[u8]) -> Result<(), TransferError> {
        let mut bytes = message.to_vec();
        let length = u16::try_from(bytes.len())
            .map_err(|_| TransferError::Controller("control message too long".into()))?;
        self.hc
            .control_transfer(
                self.device,
                SetupPacket::send_encapsulated_command(self.interface, length),
                &mut bytes,
                CONTROL_TIMEOUT_MS,
            )
            .map(|_| ())
    }

    fn fetch(&mut self, buffer: &mut [u8]) -> Result<usize, TransferError> {
        let length = u16::try_from(buffer.len()).unwrap_or(u16::MAX);
        self.hc.control_transfer(
            self.device,
            SetupPacket::get_encapsulated_response(self.interface, length),
            buffer,
            CONTROL_TIMEOUT_MS,
        )
    }

    fn now_us(&self) -> u64 {
        time::now_us()
    }

    fn sleep_us(&mut self, us: u64) {
        sched::sleep_ns(us * 1000);
    }
}

fn link_word(up: bool) -> &'static str {
    if up {
        "connected"
    } else {
        "disconnected"
    }
}

/// An RNDIS function initialized and ready for data.
pub struct RndisLink {
    pub control: ControlChannel<Ep0>,
    pub info: DeviceInfo,
    /// OID_GEN_MEDIA_CONNECT_STATUS after initialization (connected when not answered).
    pub link_up: bool,
    pub configuration: u8,
    pub bulk_in: Pipe,
    pub bulk_out: Pipe,
    pub notify: Option<Pipe>,
}

/// Brings up the RNDIS configuration of `device`: endpoints, SET_CONFIGURATION, the data
/// interface's alternate setting when not 0, then the control session to ready and the link
/// state.
pub fn open(controller: &Xhci, device: &UsbDevice) -> Result<RndisLink, String> {
    let configuration = choose_configuration(
        &device.descriptor,
        &device.configurations,
        ConfigPreference::Rndis,
    )
    .ok_or("no RNDIS configuration")?;
    let interfaces: RndisInterfaces = device
        .configuration(configuration)
        .and_then(find_interfaces)
        .ok_or("no usable RNDIS function")?;
    let mut endpoints = alloc::vec![
        endpoint_config(&interfaces.bulk_in, PipeKind::Bulk),
        endpoint_config(&interfaces.bulk_out, PipeKind::Bulk),
    ];
    endpoints.extend(
        interfaces
            .notify
            .as_ref()
            .map(|e| endpoint_config(e, PipeKind::Interrupt)),
    );
    let pipes = controller
        .configure_endpoints(device.handle, &endpoints)
        .map_err(|e| format!("configure endpoints: {e}"))?;
    let mut hc = controller.clone();
    set_configuration(&mut hc, device, configuration).map_err(|e| format!("{e}"))?;
    if interfaces.data_alt != 0 {
        hc.control_transfer(
            device.handle,
            SetupPacket::set_interface(interfaces.data_interface, interfaces.data_alt),
            &mut [],
            CONTROL_TIMEOUT_MS,
        )
        .map_err(|e| format!("SET_INTERFACE: {e}"))?;
    }
    let mut control = ControlChannel::new(
        Ep0 {
            hc,
            device: device.handle,
            interface: interfaces.control_interface,
        },
        RndisSession::new(RX_BUFFER as u32),
    );
    let info = control.initialize().map_err(|e| format!("{e}"))?;
    let link_up = control.query_link().map_err(|e| format!("{e}"))?;
    Ok(RndisLink {
        control,
        info,
        link_up,
        configuration,
        bulk_in: pipes[0].clone(),
        bulk_out: pipes[1].clone(),
        notify: pipes.get(2).cloned(),
    })
}

/// Frames each Ethernet frame as one REMOTE_NDIS_PACKET_MSG.
pub struct RndisFraming {
    /// The longest frame the device's MaxTransferSize admits.
    pub max_frame: usize,
}

impl TxFraming for RndisFraming {
    fn frame<'a>(
        &self,
        frame: &'a [u8],
        scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], &'static str> {
        if frame.len() > self.max_frame {
            return Err("frame longer than the device's MaxTransferSize admits");
        }
        encode_packet(frame, scratch);
        Ok(scratch)
    }
}

fn attach_and_work(ctx: &DeviceContext, nic_slot: &mut Option<Arc<Nic>>) -> Result<(), String> {
    let link = open(&ctx.controller, &ctx.device)?;
    let info = link.info;
    log::info!(
        "{}: rndis: configuration {}, MAC {}, MaxTransferSize {}, {} packet(s) per transfer, max frame {}, media {}",
        ctx.name,
        link.configuration,
        MacAddress(info.mac),
        info.init.max_transfer_size,
        info.init.max_packets_per_transfer,
        info.max_frame_size,
        link_word(link.link_up)
    );
    if info.max_tx_frame() < 1514 {
        log::warn!(
            "{}: rndis: the device takes frames of at most {} bytes; longer ones are dropped",
            ctx.name,
            info.max_tx_frame()
        );
    }
    let nic = net::attach_link(info.mac, bulknic::RX_QUEUE);
    let tx = BulkTx::new(
        link.bulk_out.clone(),
        TX_BUFFER,
        RndisFraming {
            max_frame: info.max_tx_frame(),
        },
        link.bulk_in.clone(),
        &nic,
    );
    nic.set_link(tx.clone());
    nic.set_carrier(link.link_up);
    *nic_slot = Some(nic.clone());
    let mut rx = BulkRx::start(link.bulk_in.clone(), RX_BUFFER)?;
    let mut class = RndisDataPath {
        name: &ctx.name,
        nic: nic.clone(),
        control: link.control,
        stats: RndisRxStats::default(),
    };
    bulknic::run_data_path(
        ctx,
        "rndis",
        &nic,
        &tx,
        &mut rx,
        link.notify.as_ref(),
        &mut class,
    )
}

/// RNDIS's side of the data loop.
struct RndisDataPath<'a> {
    name: &'a str,
    nic: Arc<Nic>,
    control: ControlChannel<Ep0>,
    stats: RndisRxStats,
}

impl RndisDataPath<'_> {
    fn follow_link(&mut self) {
        if let Some(up) = self.control.session.link_up() {
            if up != self.nic.carrier.load(Ordering::Relaxed) {
                self.nic.set_carrier(up);
                log::info!("{}: rndis: carrier {}", self.name, link_word(up));
            }
        }
    }
}

impl ClassDataPath for RndisDataPath<'_> {
    fn received(&mut self, transfer: Vec<u8>) {
        self.control.device_active();
        let nic = &self.nic;
        let Some(error) = receive_transfer(&transfer, &mut self.stats, |frame| {
            nic.deliver(frame.to_vec())
        }) else {
            return;
        };
        let malformed = nic.counters.rx_malformed.fetch_add(1, Ordering::Relaxed) + 1;
        let s = &self.stats;
        if malformed <= MALFORMED_WARNINGS || malformed.is_power_of_two() {
            log::warn!(
                "{}: rndis: malformed message #{malformed} dropped ({} bytes in the transfer): {error}; so far bad length {}, bad offset {}, bad type {}, truncated {}",
                self.name,
                transfer.len(),
                s.bad_length,
                s.bad_offset,
                s.bad_type,
                s.truncated
            );
        } else {
            log::debug!("{}: rndis: malformed message dropped: {error}", self.name);
        }
    }

    fn notified(&mut self, _notification: &[u8]) -> Result<(), String> {
        // RESPONSE_AVAILABLE (its layout varies: RNDIS's 8 bytes or a CDC header): read what
        // the device queued.
        self.control.drain().map_err(|e| format!("{e}"))?;
        self.follow_link();
        Ok(())
    }

    /// RNDIS has no function reset that QEMU or common devices honour without re-initialising
    /// the whole session; the control channel is checked instead (the media state query must
    /// be answered), and the link state followed.
    fn reset(&mut self) -> Result<(), String> {
        let up = self
            .control
            .query_link()
            .map_err(|e| format!("rndis: media state query: {e}"))?;
        if up != self.nic.carrier.load(Ordering::Relaxed) {
            self.nic.set_carrier(up);
        }
        Ok(())
    }

    fn tick(&mut self) -> Result<(), String> {
        let counters = self.control.counters;
        let keepalive = self
            .control
            .keepalive_if_idle()
            .map_err(|e| format!("{e}"))?;
        if keepalive == Some(true) {
            log::debug!("{}: rndis: keepalive answered", self.name);
        } else if keepalive == Some(false) {
            log::warn!(
                "{}: rndis: keepalive not answered ({} of {} failed)",
                self.name,
                self.control.counters.keepalive_failures,
                self.control.counters.keepalive_failures + self.control.counters.host_keepalives
            );
        }
        let now = self.control.counters;
        if now.responses_dropped > counters.responses_dropped {
            log::debug!(
                "{}: rndis: {} unusable control responses dropped so far",
                self.name,
                now.responses_dropped
            );
        }
        self.follow_link();
        Ok(())
    }
}
