//! Hubs after bring-up: the hub's thread keeps a transfer queued on its status-change interrupt
//! endpoint and forwards each changed port to the controller's bus thread, which owns
//! enumeration and the device tree (so enumeration stays one device at a time per controller).

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use tether_usb::descriptor::{Direction, TransferType};
use tether_usb::enumerate::UsbDevice;
use tether_usb::host::TransferError;
use tether_usb::hub::{hub_port_changes, is_hub};
use tether_xhci::pipe::{EndpointConfig, PipeKind};

use super::driver::{DeviceContext, UsbDriver};
use crate::sync::Mutex;

/// Port changes reported by hubs, for the bus thread: (hub's port path, hub port).
pub struct HubEvents(Mutex<VecDeque<(String, u8)>>);

impl HubEvents {
    pub const fn new() -> HubEvents {
        HubEvents(Mutex::new("usb.hub_events", VecDeque::new()))
    }

    pub fn push(&self, hub_path: &str, port: u8) {
        self.0.lock().push_back((String::from(hub_path), port));
    }

    /// The events of one bus (port paths "N-...").
    pub fn take_for(&self, bus: u8) -> Vec<(String, u8)> {
        let prefix = alloc::format!("{bus}-");
        let mut queue = self.0.lock();
        let (mine, others): (Vec<_>, Vec<_>) = queue
            .drain(..)
            .partition(|(path, _)| path.starts_with(&prefix));
        queue.extend(others);
        mine
    }
}

pub struct HubDriver;

fn status_endpoint(device: &UsbDevice) -> Option<EndpointConfig> {
    let alt = device
        .configurations
        .first()?
        .interfaces
        .first()?
        .alternates
        .first()?;
    let ep = alt.find_endpoint(TransferType::Interrupt, Direction::In)?;
    Some(EndpointConfig {
        address: ep.address,
        kind: PipeKind::Interrupt,
        max_packet: ep.max_packet_size(),
        interval: ep.interval,
        max_burst: 0,
    })
}

impl UsbDriver for HubDriver {
    fn name(&self) -> &'static str {
        "hub"
    }

    fn matches(&self, device: &UsbDevice) -> bool {
        is_hub(device) && status_endpoint(device).is_some()
    }

    fn run(&self, ctx: &DeviceContext) {
        let Some(config) = status_endpoint(&ctx.device) else {
            return;
        };
        let pipe = match ctx
            .controller
            .configure_endpoints(ctx.device.handle, &[config])
        {
            Ok(mut pipes) => pipes.remove(0),
            Err(error) => {
                log::warn!("{}: hub: status endpoint: {error}", ctx.name);
                ctx.life.wait_detached(None);
                return;
            }
        };
        let hub_path = ctx.name.rsplit(' ').next().unwrap_or_default();
        let mut pending = None;
        while !ctx.life.is_detached() {
            if pending.is_none() {
                let submitted = pipe
                    .alloc_buffer(usize::from(config.max_packet).max(1))
                    .and_then(|b| pipe.submit(b));
                match submitted {
                    Ok(handle) => pending = Some(handle),
                    Err(TransferError::Disconnected) => return,
                    Err(error) => {
                        log::warn!("{}: hub: status transfer: {error}", ctx.name);
                        let _ = pipe.clear_halt();
                        crate::sched::sleep_ms(100);
                        continue;
                    }
                }
            }
            // Poll without cancelling, so the device's life is checked every 100 ms.
            let Some(result) = pending.as_ref().and_then(|h| h.poll_wait(100_000)) else {
                continue;
            };
            let handle = pending.take().expect("checked above");
            match result {
                Ok(len) => {
                    let mut bitmap = [0u8; 8];
                    let len = len.min(bitmap.len());
                    handle.buffer().read(&mut bitmap[..len]);
                    for port in hub_port_changes(&bitmap[..len]) {
                        super::HUB_EVENTS.push(hub_path, port);
                    }
                }
                Err(TransferError::Disconnected) => return,
                Err(error) => {
                    log::debug!("{}: hub: status transfer: {error}", ctx.name);
                    let _ = pipe.clear_halt();
                }
            }
        }
    }
}
