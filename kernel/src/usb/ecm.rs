//! CDC-ECM: selects the ECM configuration and the data interface's alternate setting, reads the
//! MAC, keeps several bulk IN transfers queued (QEMU's usb-net holds a single received frame)
//! and the notification pipe armed, follows the carrier, and is a network interface: received
//! frames go to the stack's queue, frames to send go out on bulk OUT (with a zero-length packet
//! after a multiple of the endpoint's packet size, the ECM rule).

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;

use tether_usb::cdc::{self, Notification};
use tether_usb::descriptor::class;
use tether_usb::descriptor::{Direction, MacAddress, TransferType};
use tether_usb::enumerate::{read_string, set_configuration, UsbDevice};
use tether_usb::matching::{is_ecm, NetFunction};
use tether_usb::request::SetupPacket;
use tether_xhci::pipe::{EndpointConfig, PipeKind};

use super::bulknic::{self, endpoint_config, BulkRx, BulkTx, ClassDataPath, TxFraming};
use super::driver::{DeviceContext, UsbDriver};
use crate::net::{self, Nic};

/// wMaxSegmentSize 1514 plus room; one frame per transfer.
const RX_BUFFER: usize = 2048;
/// Every transmit buffer holds a full frame (wMaxSegmentSize 1514) and is reused.
const TX_BUFFER: usize = 2048;

/// ECM sends the bare frame: one frame per transfer.
struct EcmFraming;

impl TxFraming for EcmFraming {
    fn frame<'a>(
        &self,
        frame: &'a [u8],
        _scratch: &'a mut Vec<u8>,
    ) -> Result<&'a [u8], &'static str> {
        Ok(frame)
    }
}

pub struct EcmDriver;

/// The pieces of an ECM function found in a configuration.
struct EcmLayout {
    configuration: u8,
    comm_interface: u8,
    data_interface: u8,
    data_alt: u8,
    bulk_in: EndpointConfig,
    bulk_out: EndpointConfig,
    notify: Option<EndpointConfig>,
    mac_string: u8,
}

fn find_layout(device: &UsbDevice) -> Option<EcmLayout> {
    let (function, value) = super::driver::net_function_for(device)?;
    if function != NetFunction::Ecm {
        return None;
    }
    let config = device.configuration(value)?;
    let (comm_interface, comm) = config
        .interfaces
        .iter()
        .flat_map(|i| i.alternates.iter().map(move |a| (i.number, a)))
        .find(|(_, a)| is_ecm(a))?;
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
        comm_interface,
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
        bulknic::run_nic_driver(ctx, self.name(), |nic| attach_and_work(ctx, nic));
    }
}

fn attach_and_work(ctx: &DeviceContext, nic_slot: &mut Option<Arc<Nic>>) -> Result<(), String> {
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
        mac.map_or_else(|| String::from("unknown"), |m| format!("{m}"))
    );
    set_packet_filter(ctx, &layout);
    let nic = net::attach_link(
        mac.map_or([0x52, 0x54, 0, 0x12, 0x34, 0x56], |m| m.0),
        bulknic::RX_QUEUE,
    );
    let tx = BulkTx::new(
        pipes[1].clone(),
        TX_BUFFER,
        EcmFraming,
        pipes[0].clone(),
        &nic,
    );
    nic.set_link(tx.clone());
    *nic_slot = Some(nic.clone());
    let mut rx = BulkRx::start(pipes[0].clone(), RX_BUFFER)?;
    let mut class = EcmDataPath {
        ctx,
        nic: nic.clone(),
        carrier: false,
        layout,
    };
    bulknic::run_data_path(ctx, "cdc-ecm", &nic, &tx, &mut rx, pipes.get(2), &mut class)
}

/// SET_ETHERNET_PACKET_FILTER: own address, broadcast, multicast. A device that refuses it
/// (STALL) keeps its default filter, which passes the same frames on every device seen so far.
fn set_packet_filter(ctx: &DeviceContext, layout: &EcmLayout) {
    let hc = ctx.controller.clone();
    let setup =
        cdc::set_ethernet_packet_filter(layout.comm_interface, cdc::packet_filter::APPLIANCE);
    if let Err(error) = hc.control_transfer(ctx.device.handle, setup, &mut [], 1000) {
        log::debug!("{}: cdc-ecm: SET_ETHERNET_PACKET_FILTER: {error}", ctx.name);
    }
}

/// ECM's side of the data loop: every transfer is one frame; notifications carry the carrier.
struct EcmDataPath<'a> {
    ctx: &'a DeviceContext,
    nic: Arc<Nic>,
    carrier: bool,
    layout: EcmLayout,
}

impl ClassDataPath for EcmDataPath<'_> {
    /// ECM's function reset: the data interface's alternate setting 0 (no endpoints: the
    /// function drops its data path and filters, ECM 1.2 section 3.3.1), back to the one with
    /// the bulk pair, and the packet filter again.
    fn reset(&mut self) -> Result<(), String> {
        let hc = self.ctx.controller.clone();
        let handle = self.ctx.device.handle;
        for alt in [0, self.layout.data_alt] {
            hc.control_transfer(
                handle,
                SetupPacket::set_interface(self.layout.data_interface, alt),
                &mut [],
                1000,
            )
            .map_err(|e| format!("SET_INTERFACE alt {alt}: {e}"))?;
        }
        set_packet_filter(self.ctx, &self.layout);
        Ok(())
    }

    fn received(&mut self, frame: Vec<u8>) {
        // A zero-length packet ends a frame of a multiple of the packet size: not a frame.
        if !frame.is_empty() {
            self.nic.deliver(frame);
        }
    }

    fn notified(&mut self, bytes: &[u8]) -> Result<(), String> {
        match cdc::parse_notification(bytes) {
            Ok(Notification::NetworkConnection(up)) if up != self.carrier => {
                self.carrier = up;
                self.nic.set_carrier(up);
                log::info!(
                    "{}: cdc-ecm: carrier {}",
                    self.ctx.name,
                    if up { "up" } else { "down" }
                );
            }
            Ok(Notification::SpeedChange {
                downstream,
                upstream,
            }) => {
                log::debug!(
                    "{}: cdc-ecm: link {downstream}/{upstream} bit/s",
                    self.ctx.name
                )
            }
            Ok(_) => {}
            Err(error) => log::debug!("{}: cdc-ecm: {error}", self.ctx.name),
        }
        Ok(())
    }
}
