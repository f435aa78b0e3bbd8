//! External hubs (USB 2.0 ch. 11, USB 3.2 ch. 10): hub bring-up and per-port handling over
//! any [`HostController`].
//!
//! In the running system the hub's interrupt IN endpoint reports a change bitmap; the hub
//! thread turns it into port numbers with [`hub_port_changes`] and calls [`handle_port`] for
//! each. Waiting is done through a `delay_ms` callback so this stays pure and host-tested.

use core::fmt;

use crate::descriptor::class;
use crate::enumerate::{
    enumerate, set_configuration, EnumerateError, StepError, UsbDevice, CONTROL_TIMEOUT_MS,
};
use crate::host::{Attachment, DeviceHandle, HostController, TransferError};
use crate::request::{HubDescriptor, PortFeature, PortStatus, SetupPacket};
use crate::speed::Speed;

/// Hub tiers a route string can describe (5 nibbles).
pub const MAX_ROUTE_TIERS: u8 = 5;
/// Ports per hub accepted (the hub descriptor's DeviceRemovable bitmap is tracked for 31).
pub const MAX_HUB_PORTS: u8 = 31;
/// Connect debounce (USB 2.0 7.1.7.3 TATTDB).
pub const DEBOUNCE_MS: u32 = 100;
/// Time between polls of a port in reset.
pub const RESET_POLL_MS: u32 = 10;
/// Polls before a port reset counts as failed.
pub const RESET_POLLS: u32 = 50;
/// Reset recovery before the first request to the device (USB 2.0 7.1.7.5 TRSTRCY).
pub const RESET_RECOVERY_MS: u32 = 10;

/// Step names of the hub logic.
pub mod step {
    pub const NOT_A_HUB: &str = "hub check";
    pub const GET_HUB_DESCRIPTOR: &str = "GET_HUB_DESCRIPTOR";
    pub const SET_HUB_DEPTH: &str = "SET_HUB_DEPTH";
    pub const CONFIGURE_HUB: &str = "configure hub in controller";
    pub const PORT_POWER: &str = "SET_PORT_FEATURE(PORT_POWER)";
    pub const GET_PORT_STATUS: &str = "GET_PORT_STATUS";
    pub const CLEAR_PORT_FEATURE: &str = "CLEAR_PORT_FEATURE";
    pub const PORT_RESET: &str = "SET_PORT_FEATURE(PORT_RESET)";
    pub const CHILD_ATTACHMENT: &str = "child attachment";
}

/// A hub ready for port handling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hub {
    pub handle: DeviceHandle,
    pub attachment: Attachment,
    pub descriptor: HubDescriptor,
    /// Multiple transaction translators in use (always false today: the multi-TT alternate
    /// setting is not selected).
    pub multi_tt: bool,
}

/// A hub failure: which port (None for the hub itself) and the step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubError {
    pub port: Option<u8>,
    pub error: EnumerateError,
}

impl fmt::Display for HubError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.port {
            Some(p) => write!(f, "hub port {p}: {}", self.error),
            None => write!(f, "hub: {}", self.error),
        }
    }
}

fn fail<E: Into<StepError>>(port: Option<u8>, step: &'static str) -> impl FnOnce(E) -> HubError {
    move |e| HubError {
        port,
        error: EnumerateError {
            step,
            error: e.into(),
        },
    }
}

/// Number of hub tiers in a route string (0 for a device on a root port).
pub fn route_depth(route: u32) -> u8 {
    let mut depth = 0;
    let mut r = route;
    while r & 0xF != 0 && depth < MAX_ROUTE_TIERS {
        depth += 1;
        r >>= 4;
    }
    depth
}

/// The attachment of a device of `speed` on `port` of `hub`: same root port, route string
/// with the port in the next tier (ports above 15 are encoded as 15, xHCI 8.9), and the
/// transaction translator for full/low-speed devices: the hub itself when it is a
/// high-speed hub, else the one the hub inherited.
pub fn child_attachment(hub: &Hub, port: u8, speed: Speed) -> Result<Attachment, StepError> {
    let parent = &hub.attachment;
    let depth = route_depth(parent.route);
    if depth >= MAX_ROUTE_TIERS {
        return Err(StepError::HubTooDeep { depth });
    }
    let tt = if speed.needs_tt() {
        if parent.speed == Speed::High {
            Some((hub.handle, port))
        } else {
            parent.tt
        }
    } else {
        None
    };
    Ok(Attachment {
        root_port: parent.root_port,
        route: parent.route | (port.min(15) as u32) << (4 * depth),
        speed,
        tt,
    })
}

/// Whether the device is a hub: by its device class, or by its first interface's when the
/// device leaves the class to its interfaces.
pub fn is_hub(dev: &UsbDevice) -> bool {
    dev.descriptor.class == class::HUB
        || (dev.descriptor.class == class::PER_INTERFACE
            && dev
                .configurations
                .first()
                .and_then(|c| c.interfaces.first())
                .and_then(|i| i.alternates.first())
                .is_some_and(|a| a.class == class::HUB))
}

/// Brings up an enumerated hub: SET_CONFIGURATION (first configuration), GET_HUB_DESCRIPTOR,
/// SET_HUB_DEPTH (SuperSpeed), tells the controller it is a hub, powers every port and waits
/// bPwrOn2PwrGood * 2 ms. Connected ports then report a connect change; handle them with
/// [`handle_port`] (or [`scan_ports`]).
pub fn init_hub(
    hc: &mut impl HostController,
    dev: &UsbDevice,
    delay_ms: &mut dyn FnMut(u32),
) -> Result<Hub, HubError> {
    if !is_hub(dev) {
        return Err(fail(None, step::NOT_A_HUB)(StepError::NotAHub));
    }
    let depth = route_depth(dev.attachment.route);
    if depth >= MAX_ROUTE_TIERS {
        return Err(fail(None, step::NOT_A_HUB)(StepError::HubTooDeep { depth }));
    }
    let value = dev.configurations.first().map_or(1, |c| c.value);
    set_configuration(hc, dev, value).map_err(|error| HubError { port: None, error })?;

    let superspeed = dev.attachment.speed.is_superspeed();
    // USB 2.0: 7 bytes + two bitmaps of up to 32 bytes; SuperSpeed: 12 bytes.
    let mut buf = [0u8; 71];
    let len = if superspeed { 12 } else { 71 };
    let n = hc
        .control_transfer(
            dev.handle,
            SetupPacket::get_hub_descriptor(superspeed, len),
            &mut buf[..len as usize],
            CONTROL_TIMEOUT_MS,
        )
        .map_err(fail::<TransferError>(None, step::GET_HUB_DESCRIPTOR))?;
    let descriptor = HubDescriptor::parse(&buf[..n.min(len as usize)])
        .map_err(fail(None, step::GET_HUB_DESCRIPTOR))?;
    if descriptor.num_ports > MAX_HUB_PORTS {
        return Err(fail(None, step::GET_HUB_DESCRIPTOR)(
            StepError::TooManyPorts {
                ports: descriptor.num_ports,
                max: MAX_HUB_PORTS,
            },
        ));
    }
    if superspeed {
        hc.control_transfer(
            dev.handle,
            SetupPacket::set_hub_depth(depth),
            &mut [],
            CONTROL_TIMEOUT_MS,
        )
        .map_err(fail::<TransferError>(None, step::SET_HUB_DEPTH))?;
    }
    let multi_tt = false;
    hc.configure_hub(
        dev.handle,
        descriptor.num_ports,
        descriptor.tt_think_time_bits(),
        multi_tt,
    )
    .map_err(fail::<TransferError>(None, step::CONFIGURE_HUB))?;
    for port in 1..=descriptor.num_ports {
        hc.control_transfer(
            dev.handle,
            SetupPacket::set_port_feature(port, PortFeature::Power),
            &mut [],
            CONTROL_TIMEOUT_MS,
        )
        .map_err(fail::<TransferError>(Some(port), step::PORT_POWER))?;
    }
    delay_ms(descriptor.power_on_to_good_ms as u32);
    Ok(Hub {
        handle: dev.handle,
        attachment: dev.attachment,
        descriptor,
        multi_tt,
    })
}

/// Port numbers whose bit is set in a hub status-change bitmap (the hub's interrupt IN data:
/// bit 0 = the hub itself, bit n = port n).
pub fn hub_port_changes(bitmap: &[u8]) -> impl Iterator<Item = u8> + '_ {
    bitmap.iter().enumerate().flat_map(|(byte, b)| {
        (0..8u32).filter_map(move |bit| {
            let port = byte * 8 + bit as usize;
            (port != 0 && port <= u8::MAX as usize && b & (1 << bit) != 0).then_some(port as u8)
        })
    })
}

/// Whether the hub itself (bit 0) reports a change (local power, over-current).
pub fn hub_status_changed(bitmap: &[u8]) -> bool {
    bitmap.first().is_some_and(|b| b & 1 != 0)
}

/// What [`handle_port`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortEvent {
    /// A device was connected, reset and enumerated.
    Attached(UsbDevice),
    /// The device on the port went away: release it and detach its driver.
    Detached,
    /// Nothing connected, no connect change.
    Empty,
    /// Still connected and enabled; the change was something else (acknowledged).
    Unchanged,
    /// The port reports over-current (acknowledged; the port is off).
    OverCurrent,
}

fn port_status(hc: &mut impl HostController, hub: &Hub, port: u8) -> Result<PortStatus, HubError> {
    let mut buf = [0u8; 4];
    let n = hc
        .control_transfer(
            hub.handle,
            SetupPacket::get_port_status(port),
            &mut buf,
            CONTROL_TIMEOUT_MS,
        )
        .map_err(fail::<TransferError>(Some(port), step::GET_PORT_STATUS))?;
    PortStatus::parse(&buf[..n.min(4)], hub.descriptor.superspeed)
        .map_err(fail(Some(port), step::GET_PORT_STATUS))
}

fn clear_port_feature(
    hc: &mut impl HostController,
    hub: &Hub,
    port: u8,
    feature: PortFeature,
) -> Result<(), HubError> {
    hc.control_transfer(
        hub.handle,
        SetupPacket::clear_port_feature(port, feature),
        &mut [],
        CONTROL_TIMEOUT_MS,
    )
    .map(|_| ())
    .map_err(fail::<TransferError>(Some(port), step::CLEAR_PORT_FEATURE))
}

/// Handles one port of a hub after a change: reads and acknowledges its status; on a new
/// connection debounces, resets the port, waits for C_PORT_RESET, computes the child's
/// attachment and enumerates it. A child that fails to enumerate is released (by
/// [`enumerate`]) and its port disabled; the error names the port and the step.
pub fn handle_port(
    hc: &mut impl HostController,
    hub: &Hub,
    port: u8,
    lang: u16,
    delay_ms: &mut dyn FnMut(u32),
) -> Result<PortEvent, HubError> {
    let some = Some(port);
    let status = port_status(hc, hub, port)?;
    for feature in status.changes_to_clear() {
        clear_port_feature(hc, hub, port, feature)?;
    }
    if status.over_current() {
        return Ok(PortEvent::OverCurrent);
    }
    if !status.connected() {
        return Ok(if status.connection_changed() {
            PortEvent::Detached
        } else {
            PortEvent::Empty
        });
    }
    if status.enabled() && !status.connection_changed() {
        return Ok(PortEvent::Unchanged);
    }

    delay_ms(DEBOUNCE_MS);
    let status = port_status(hc, hub, port)?;
    if !status.connected() {
        return Ok(PortEvent::Detached);
    }
    hc.control_transfer(
        hub.handle,
        SetupPacket::set_port_feature(port, PortFeature::Reset),
        &mut [],
        CONTROL_TIMEOUT_MS,
    )
    .map_err(fail::<TransferError>(some, step::PORT_RESET))?;
    let mut done = None;
    for _ in 0..RESET_POLLS {
        delay_ms(RESET_POLL_MS);
        let s = port_status(hc, hub, port)?;
        if s.reset_changed() || (!s.resetting() && s.enabled()) {
            done = Some(s);
            break;
        }
    }
    let Some(status) = done else {
        return Err(fail(some, step::PORT_RESET)(StepError::ResetTimeout));
    };
    for feature in status.changes_to_clear() {
        clear_port_feature(hc, hub, port, feature)?;
    }
    if !status.connected() {
        return Ok(PortEvent::Detached);
    }
    if !status.enabled() {
        return Err(fail(some, step::PORT_RESET)(StepError::PortNotEnabled));
    }
    delay_ms(RESET_RECOVERY_MS);
    let speed = status.speed().unwrap_or(Speed::Full);
    let at = child_attachment(hub, port, speed).map_err(fail(some, step::CHILD_ATTACHMENT))?;
    match enumerate(hc, at, lang) {
        Ok(dev) => Ok(PortEvent::Attached(dev)),
        Err(error) => {
            // Keep a device that does not enumerate off the bus; best effort (the port may
            // be gone with it).
            let _ = clear_port_feature(hc, hub, port, PortFeature::Enable);
            Err(HubError { port: some, error })
        }
    }
}

/// Handles every port of a freshly initialised hub (the boot-time scan, before the interrupt
/// endpoint runs). Returns one result per port, in port order.
pub fn scan_ports(
    hc: &mut impl HostController,
    hub: &Hub,
    lang: u16,
    delay_ms: &mut dyn FnMut(u32),
) -> alloc::vec::Vec<(u8, Result<PortEvent, HubError>)> {
    (1..=hub.descriptor.num_ports)
        .map(|p| (p, handle_port(hc, hub, p, lang, delay_ms)))
        .collect()
}
