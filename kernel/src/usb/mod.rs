//! USB: finds xHCI controllers on PCI and gives each a thread of its own (`xhciN`) that brings
//! the controller up, enumerates what is plugged into its root ports and logs the device table.
//! The controller driver (`tether-xhci`) and the enumeration logic (`tether-usb`) are plain
//! code over narrow traits; this module supplies DMA, MMIO mapping, time and interrupts.

mod dma;
mod mapper;
mod os;
pub mod registry;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;

use tether_pci::PciFunction;
use tether_usb::device::DeviceSummary;
use tether_usb::enumerate::{enumerate, UsbDevice};
use tether_usb::host::{Attachment, HostController};
use tether_usb::hub;
use tether_xhci::controller::Controller;

use crate::sched::{Priority, Spawn};
use crate::{cpu, pci};

const CLASS_SERIAL_BUS: u8 = 0x0C;
const SUBCLASS_USB: u8 = 0x03;
const PROG_IF_XHCI: u8 = 0x30;
const HUB_CLASS: u8 = 0x09;
/// US English, what nearly every device offers.
const LANGUAGE: u16 = 0x0409;

/// Starts one thread per xHCI controller found on PCI.
pub fn start() {
    let controllers = pci::functions().iter().filter(|f| {
        f.class == CLASS_SERIAL_BUS && f.subclass == SUBCLASS_USB && f.prog_if == PROG_IF_XHCI
    });
    for (index, function) in controllers.enumerate() {
        let function = function.clone();
        Spawn::new(format!("xhci{}", index + 1))
            .priority(Priority::Driver)
            .start(move || run_controller(index + 1, function));
    }
}

/// Routes the controller's first interrupter to a vector: MSI-X, else MSI; without either the
/// driver still works, by polling with short timeouts.
fn setup_interrupt(function: &PciFunction, os: &alloc::sync::Arc<os::KernelOs>) -> &'static str {
    let Some(vector) = pci::allocate_vector(os::controller_interrupt) else {
        return "polling (no free vector)";
    };
    os::register_vector(vector, os.clone());
    let apic_id = cpu::this().apic_id;
    if function.msix.is_some() && pci::enable_msix_entry(function, 0, vector, apic_id).is_ok() {
        "MSI-X"
    } else if function.msi.is_some() && pci::enable_msi(function, vector, apic_id).is_ok() {
        "MSI"
    } else {
        "polling (no MSI/MSI-X)"
    }
}

fn run_controller(number: usize, function: PciFunction) {
    registry::controller_started();
    let name = format!("xhci{number}");
    match bring_up(&name, &function) {
        Ok(mut controller) => {
            enumerate_root_ports(&name, number as u8, &mut controller);
            registry::controller_settled();
            loop {
                controller.process_events();
                crate::sched::sleep_ms(1000);
            }
        }
        Err(error) => {
            log::error!("{name}: {} failed to start: {error}", function.address);
            registry::controller_settled();
        }
    }
}

fn bring_up(
    name: &str,
    function: &PciFunction,
) -> Result<Controller<mapper::IdentityMapper>, String> {
    let bar = function.bars[0]
        .filter(|b| b.is_memory())
        .ok_or_else(|| String::from("no memory BAR0"))?;
    tether_pci::enable_bus_master_and_memory(&pci::CONFIG, function.address);
    let os = os::KernelOs::new();
    let interrupts = setup_interrupt(function, &os);
    // SAFETY: BAR0 of an xHCI function is its register space, and this thread is the only
    // driver of this controller.
    let controller = unsafe {
        Controller::new(
            bar.address() as usize,
            mapper::IdentityMapper,
            Box::new(dma::KernelDma { limit: None }),
            os.clone(),
        )
    }
    .map_err(|e| format!("{e}"))?;
    let info = controller.info();
    log::info!(
        "{name}: {} {:04x}:{:04x} xHCI {:x}.{:02x} running: {} ports, {} slots, {}-byte contexts, {} scratchpads, interrupts by {interrupts}",
        function.address,
        function.vendor_id,
        function.device_id,
        info.version >> 8,
        info.version & 0xFF,
        info.max_ports,
        info.slots_enabled,
        info.context_size.bytes(),
        info.scratchpads,
    );
    Ok(controller)
}

fn record(name: &str, bus: u8, device: &UsbDevice) {
    let summary = DeviceSummary::new(name, bus, device, None);
    log::info!(
        "{name} {} {:?} {:04x}:{:04x} {} {} ({})",
        summary.port_path,
        summary.speed,
        summary.vid,
        summary.pid,
        summary.class_name(),
        device.product.as_deref().unwrap_or("-"),
        "no driver"
    );
    registry::add(registry::DeviceRecord {
        controller: String::from(name),
        port_path: summary.port_path.clone(),
        speed: summary.speed,
        vendor_id: summary.vid,
        product_id: summary.pid,
        class: summary.class,
        product: device.product.clone(),
        driver: None,
    });
}

fn enumerate_root_ports(name: &str, bus: u8, controller: &mut Controller<mapper::IdentityMapper>) {
    for port in 1..=controller.port_count() {
        let status = controller.port_status(port);
        controller.acknowledge_port_change(port);
        if !status.connected {
            continue;
        }
        let speed = match controller.reset_port(port) {
            Ok(speed) => speed,
            Err(error) => {
                log::warn!("{name}: port {port}: reset failed: {error}");
                continue;
            }
        };
        let at = Attachment {
            root_port: port,
            route: 0,
            speed,
            tt: None,
        };
        match enumerate(controller, at, LANGUAGE) {
            Ok(device) => attach(name, bus, controller, device, 1),
            Err(error) => log::warn!("{name}: port {port}: {error}"),
        }
    }
}

/// Records a new device; a hub's ports are scanned in turn (at most five tiers deep, as USB allows).
fn attach(
    name: &str,
    bus: u8,
    controller: &mut Controller<mapper::IdentityMapper>,
    device: UsbDevice,
    tier: u8,
) {
    record(name, bus, &device);
    let is_hub = DeviceSummary::new(name, bus, &device, None).class == HUB_CLASS;
    if !is_hub || tier > 5 {
        return;
    }
    let mut delay = |ms: u32| crate::sched::sleep_ms(u64::from(ms));
    let hub = match hub::init_hub(controller, &device, &mut delay) {
        Ok(hub) => hub,
        Err(error) => {
            log::warn!(
                "{name}: hub {}: {error}",
                tether_usb::device::port_path(bus, &device.attachment)
            );
            return;
        }
    };
    for (port, event) in hub::scan_ports(controller, &hub, LANGUAGE, &mut delay) {
        match event {
            Ok(hub::PortEvent::Attached(child)) => attach(name, bus, controller, child, tier + 1),
            Ok(_) => {}
            Err(error) => log::warn!("{name}: hub port {port}: {error}"),
        }
    }
}
