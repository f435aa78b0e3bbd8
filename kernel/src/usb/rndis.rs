//! RNDIS (Remote NDIS over USB), bound instead of CDC-ECM on devices offering both when the
//! command line says `usbnet=rndis`, and on devices offering only RNDIS. The protocol logic is
//! `tether_usb::rndis` (host-tested); this is its I/O.
//!
//! Control: messages go out with SEND_ENCAPSULATED_COMMAND and their completions come back
//! with GET_ENCAPSULATED_RESPONSE. The device is meant to announce each response on its
//! interrupt endpoint (RESPONSE_AVAILABLE), but QEMU's never completes, so responses are
//! polled for with a bounded back-off; a completed interrupt transfer only makes the driver
//! read early. INITIALIZE → QUERY MAC → QUERY max frame → SET packet filter, then the link
//! state is queried. Afterwards a host KEEPALIVE goes out after [`KEEPALIVE_IDLE_US`] of
//! control silence, and a device's KEEPALIVE is answered.
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
use tether_usb::host::DeviceHandle;
use tether_usb::matching::{choose_configuration, ConfigPreference, NetFunction};
use tether_usb::request::SetupPacket;
use tether_usb::rndis::{
    self, decode_packets, encode_packet, find_interfaces, DeviceInfo, RndisError, RndisInterfaces,
    RndisRxStats, RndisSession, SessionEvent, SessionState,
};
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
/// How long the device gets to queue the response to a control message.
const RESPONSE_TIMEOUT_US: u64 = 2_000_000;
/// Longest sleep between two GET_ENCAPSULATED_RESPONSE polls.
const RESPONSE_POLL_MAX_US: u64 = 10_000;
/// Unusable responses (stale, corrupt) skipped while waiting for one request's completion.
const MAX_SKIPPED_RESPONSES: u32 = 8;
/// Device-initiated messages read at most after one RESPONSE_AVAILABLE.
const MAX_DRAINED_RESPONSES: u32 = 8;
/// Control silence after which the host sends KEEPALIVE (what Linux and Windows use).
pub const KEEPALIVE_IDLE_US: u64 = 5_000_000;
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

/// Control messages to one RNDIS function and their completions.
pub struct Control {
    hc: Xhci,
    device: DeviceHandle,
    interface: u8,
    pub session: RndisSession,
    response: Vec<u8>,
    /// When the device last answered (for the keepalive).
    last_answer_us: u64,
    pub counters: ControlCounters,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct ControlCounters {
    /// Responses that were stale, corrupt or unsolicited, dropped.
    pub responses_dropped: u64,
    /// Device KEEPALIVEs answered.
    pub device_keepalives: u64,
    /// Host KEEPALIVEs completed.
    pub host_keepalives: u64,
    /// Host KEEPALIVEs that failed (no answer, refused).
    pub keepalive_failures: u64,
    /// INDICATE_STATUS messages.
    pub indications: u64,
}

impl Control {
    fn send(&mut self, message: &[u8]) -> Result<(), String> {
        let mut bytes = message.to_vec();
        let length = u16::try_from(bytes.len()).map_err(|_| "control message too long")?;
        self.hc
            .control_transfer(
                self.device,
                SetupPacket::send_encapsulated_command(self.interface, length),
                &mut bytes,
                CONTROL_TIMEOUT_MS,
            )
            .map_err(|e| {
                format!(
                    "SEND_ENCAPSULATED_COMMAND({}): {e}",
                    rndis::message_name(rndis::message_type(message).unwrap_or(0))
                )
            })?;
        Ok(())
    }

    /// One GET_ENCAPSULATED_RESPONSE: the device's next queued message (QEMU answers one zero
    /// byte when there is none).
    fn fetch(&mut self) -> Result<&[u8], String> {
        self.response
            .resize(usize::from(rndis::RESPONSE_BUFFER_LEN), 0);
        let len = self
            .hc
            .control_transfer(
                self.device,
                SetupPacket::get_encapsulated_response(self.interface, rndis::RESPONSE_BUFFER_LEN),
                &mut self.response,
                CONTROL_TIMEOUT_MS,
            )
            .map_err(|e| format!("GET_ENCAPSULATED_RESPONSE: {e}"))?;
        Ok(&self.response[..len.min(self.response.len())])
    }

    /// Feeds one response to the session. Device-initiated messages are handled here (a
    /// KEEPALIVE answered, an indication counted) and give None; so does a response that is
    /// unusable but leaves the request pending (counted, skipped).
    fn consume(&mut self) -> Result<Option<SessionEvent>, ConsumeError> {
        let now = time::now_us();
        let Control {
            session, response, ..
        } = self;
        let event = session.on_response(response);
        match event {
            Ok(SessionEvent::NoResponse) => Ok(Some(SessionEvent::NoResponse)),
            Ok(SessionEvent::Reply(reply)) => {
                self.last_answer_us = now;
                self.send(&reply).map_err(ConsumeError::Io)?;
                self.counters.device_keepalives += 1;
                Ok(None)
            }
            Ok(SessionEvent::Link(up)) => {
                self.last_answer_us = now;
                self.counters.indications += 1;
                log::info!("rndis: device indicates media {}", link_word(up));
                Ok(None)
            }
            Ok(SessionEvent::StatusIndication(status)) => {
                self.last_answer_us = now;
                self.counters.indications += 1;
                log::debug!(
                    "rndis: device indicates {status:#010x} ({})",
                    rndis::status_name(status)
                );
                Ok(None)
            }
            Ok(event) => {
                self.last_answer_us = now;
                Ok(Some(event))
            }
            Err(error) => {
                self.counters.responses_dropped += 1;
                Err(ConsumeError::Rndis(error))
            }
        }
    }

    /// Sends `request` and reads responses until the one completing it, polling with a
    /// growing pause while the device has nothing queued, for at most [`RESPONSE_TIMEOUT_US`].
    /// Device-initiated messages met on the way are handled; a stale or corrupt response is
    /// skipped (a few at most); a completion refusing the request ends it with the error.
    pub fn exchange(&mut self, request: Vec<u8>) -> Result<SessionEvent, String> {
        let what = rndis::message_name(rndis::message_type(&request).unwrap_or(0));
        self.send(&request)?;
        let deadline = time::now_us() + RESPONSE_TIMEOUT_US;
        let mut pause_us = 50;
        let mut skipped = 0;
        loop {
            self.fetch()?;
            match self.consume() {
                Ok(Some(SessionEvent::NoResponse)) => {
                    if time::now_us() >= deadline {
                        return Err(format!(
                            "{what}: no response within {} ms",
                            RESPONSE_TIMEOUT_US / 1000
                        ));
                    }
                    sched::sleep_ns(pause_us * 1000);
                    pause_us = (pause_us * 2).min(RESPONSE_POLL_MAX_US);
                }
                Ok(Some(event)) => return Ok(event),
                Ok(None) => {}
                Err(ConsumeError::Io(error)) => return Err(error),
                Err(ConsumeError::Rndis(error)) => {
                    if !self.session.awaiting_response() {
                        return Err(format!("{what} refused: {error}"));
                    }
                    skipped += 1;
                    log::debug!("rndis: response skipped: {error}");
                    if skipped > MAX_SKIPPED_RESPONSES {
                        return Err(format!("{what}: {skipped} unusable responses: {error}"));
                    }
                }
            }
        }
    }

    /// Reads what the device queued on its own (after RESPONSE_AVAILABLE): indications and
    /// keepalives, until it has nothing more (a bounded number).
    pub fn drain(&mut self) -> Result<(), String> {
        for _ in 0..MAX_DRAINED_RESPONSES {
            self.fetch()?;
            match self.consume() {
                Ok(Some(SessionEvent::NoResponse)) => return Ok(()),
                Ok(_) => {}
                Err(ConsumeError::Io(error)) => return Err(error),
                Err(ConsumeError::Rndis(error)) => {
                    log::debug!("rndis: unsolicited response dropped: {error}")
                }
            }
        }
        Ok(())
    }

    /// The host's KEEPALIVE when the control channel has been silent for
    /// [`KEEPALIVE_IDLE_US`]. A device that does not answer is reported, not dropped: data
    /// may still flow.
    pub fn keepalive_if_idle(&mut self) -> Result<(), String> {
        if time::now_us().saturating_sub(self.last_answer_us) < KEEPALIVE_IDLE_US {
            return Ok(());
        }
        let Ok(request) = self.session.keepalive() else {
            return Ok(());
        };
        match self.exchange(request) {
            Ok(SessionEvent::KeepaliveDone) => {
                self.counters.host_keepalives += 1;
                Ok(())
            }
            Ok(other) => Err(format!("KEEPALIVE completed by {other:?}")),
            Err(error) => {
                self.counters.keepalive_failures += 1;
                // Try again after another idle period rather than at every tick.
                self.last_answer_us = time::now_us();
                log::warn!("rndis: keepalive failed: {error}");
                Ok(())
            }
        }
    }
}

enum ConsumeError {
    /// The control transfer failed (the device is likely gone).
    Io(String),
    /// The response was unusable.
    Rndis(RndisError),
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
    pub control: Control,
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
    let mut control = Control {
        hc,
        device: device.handle,
        interface: interfaces.control_interface,
        session: RndisSession::new(RX_BUFFER as u32),
        response: Vec::new(),
        last_answer_us: time::now_us(),
        counters: ControlCounters::default(),
    };
    let mut request = control.session.start();
    let info = loop {
        match control.exchange(request)? {
            SessionEvent::Send(next) => request = next,
            SessionEvent::Ready(info) => break info,
            other => return Err(format!("initialization: unexpected {other:?}")),
        }
    };
    let link_up = query_link(&mut control)?;
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

/// OID_GEN_MEDIA_CONNECT_STATUS; a device that refuses the query is taken as connected.
fn query_link(control: &mut Control) -> Result<bool, String> {
    let request = control
        .session
        .query(rndis::OID_GEN_MEDIA_CONNECT_STATUS)
        .map_err(|e| format!("{e}"))?;
    match control.exchange(request) {
        Ok(SessionEvent::QueryDone { info, .. }) => {
            match rndis::info_u32("QUERY_CMPLT", rndis::Field::InformationBufferLength, &info) {
                Ok(state) => Ok(state == rndis::MEDIA_STATE_CONNECTED),
                Err(error) => {
                    log::debug!("rndis: media connect status unusable: {error}");
                    Ok(true)
                }
            }
        }
        Ok(other) => Err(format!("media connect status: unexpected {other:?}")),
        Err(error) if control.session.state() == SessionState::Ready => {
            log::debug!("rndis: media connect status not answered: {error}");
            Ok(true)
        }
        Err(error) => Err(error),
    }
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

/// Walks one received transfer: every valid frame goes to `deliver`; a bad message is counted
/// in `stats` and ends the walk (its lengths cannot be trusted to find the next one). Returns
/// the error, if any, for the caller to report.
pub fn receive_transfer(
    transfer: &[u8],
    stats: &mut RndisRxStats,
    mut deliver: impl FnMut(&[u8]),
) -> Option<RndisError> {
    for item in decode_packets(transfer) {
        stats.record(&item);
        match item {
            Ok(frame) => deliver(frame),
            Err(error) => return Some(error),
        }
    }
    None
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
    let tx = BulkTx::new(
        link.bulk_out.clone(),
        TX_BUFFER,
        RndisFraming {
            max_frame: info.max_tx_frame(),
        },
    );
    let nic = Nic::new(net::next_name(), info.mac, bulknic::RX_QUEUE, tx);
    nic.set_carrier(link.link_up);
    *nic_slot = Some(nic.clone());
    net::attach(nic.clone());
    let mut rx = BulkRx::start(link.bulk_in.clone(), RX_BUFFER)?;
    let mut class = RndisDataPath {
        name: &ctx.name,
        nic,
        control: link.control,
        stats: RndisRxStats::default(),
    };
    bulknic::run_data_path(ctx, "rndis", &mut rx, link.notify.as_ref(), &mut class)
}

/// RNDIS's side of the data loop.
struct RndisDataPath<'a> {
    name: &'a str,
    nic: Arc<Nic>,
    control: Control,
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
        self.control.drain()?;
        self.follow_link();
        Ok(())
    }

    fn tick(&mut self) -> Result<(), String> {
        self.control.keepalive_if_idle()?;
        self.follow_link();
        Ok(())
    }
}
