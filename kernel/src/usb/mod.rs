//! USB: finds xHCI controllers on PCI and gives each a thread of its own (`xhciN`) that brings
//! the controller up, enumerates what is plugged into its root ports and logs the device table.
//! The controller driver (`tether-xhci`) and the enumeration logic (`tether-usb`) are plain
//! code over narrow traits; this module supplies DMA, MMIO mapping, time and interrupts.

pub mod bulknic;
mod dma;
pub mod driver;
mod ecm;
mod hubdriver;
mod mapper;
mod os;
pub mod registry;
pub mod rndis;

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;

use alloc::collections::BTreeMap;
use alloc::sync::Arc;
use alloc::vec::Vec;
use tether_pci::PciFunction;

use tether_usb::device::DeviceSummary;
use tether_usb::enumerate::{enumerate, probe_device_qualifier, UsbDevice};
use tether_usb::host::{Attachment, HostController};
use tether_usb::hub;
use tether_usb::request::{rt, SetupPacket};
use tether_xhci::controller::Controller;

use driver::{find_driver, DeviceContext, DeviceLife};

use crate::sched::{JoinHandle, Priority, Spawn};
use crate::{cpu, pci};

const CLASS_SERIAL_BUS: u8 = 0x0C;
const SUBCLASS_USB: u8 = 0x03;
const PROG_IF_XHCI: u8 = 0x30;

pub type Xhci = Controller<mapper::IdentityMapper>;
/// US English, what nearly every device offers.
const LANGUAGE: u16 = 0x0409;

/// Port changes that hubs' threads report, for the bus threads.
pub(crate) static HUB_EVENTS: hubdriver::HubEvents = hubdriver::HubEvents::new();

static CONTROLLERS: crate::sync::Mutex<Vec<(String, Xhci)>> =
    crate::sync::Mutex::new("usb.controllers", Vec::new());

/// Every running controller, by name (for the console's `pipes` and, later, /metrics).
pub fn controllers() -> Vec<(String, Xhci)> {
    CONTROLLERS.lock().clone()
}

/// Starts one thread per xHCI controller found on PCI.
pub fn start() {
    let controllers = pci::functions().iter().filter(|f| {
        f.class == CLASS_SERIAL_BUS && f.subclass == SUBCLASS_USB && f.prog_if == PROG_IF_XHCI
    });
    for (index, function) in controllers.enumerate() {
        // Counted here, before the thread exists, so wait_settled cannot miss a controller.
        registry::controller_started();
        let function = function.clone();
        Spawn::new(format!("xhci{}", index + 1))
            .priority(Priority::Driver)
            .start(move || run_controller(index + 1, function));
    }
}

/// Routes the controller's first interrupter to a vector: MSI-X, else MSI, else its INTx line;
/// without any the driver still works, by polling with short timeouts.
///
/// INTx: which I/O APIC input a PCI pin reaches is ACPI's `_PRT` (AML, not interpreted here).
/// The firmware's routing is used instead: it writes the legacy IRQ it routed the pin to into
/// the Interrupt Line register (SeaBIOS does on q35 and i440fx, PC BIOSes and CSMs do), and the
/// chipset delivers a PIRQ routed to an ISA IRQ to that I/O APIC input too. Level-triggered,
/// active low, as PCI interrupts are; possibly shared.
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
    } else if let (1..=4, line @ 1..=15) = (function.interrupt_pin, function.interrupt_line) {
        let gsi = crate::boot::isa_irq(line).gsi;
        os.use_intx(gsi);
        match pci::enable_intx(function)
            .and_then(|()| crate::arch::ioapic::route(gsi, vector, apic_id, true, true))
        {
            Ok(()) => "INTx",
            Err(error) => {
                log::warn!("{}: INTx on IRQ {line}: {error}", function.address);
                "polling (INTx routing failed)"
            }
        }
    } else {
        "polling (no MSI/MSI-X, no INTx line from the firmware)"
    }
}

fn run_controller(number: usize, function: PciFunction) {
    let name = format!("xhci{number}");
    match bring_up(&name, &function) {
        Ok(controller) => {
            CONTROLLERS.lock().push((name.clone(), controller.clone()));
            let mut bus = Bus {
                name,
                number: number as u8,
                controller,
                attached: BTreeMap::new(),
            };
            bus.rescan_root_ports();
            bus.log_table();
            registry::controller_settled();
            bus.watch();
        }
        Err(error) => {
            log::error!("{name}: {} failed to start: {error}", function.address);
            registry::controller_settled();
        }
    }
}

/// Each controller's interrupt mode and its interrupt count (console, tests).
static INTERRUPT_MODES: crate::sync::SpinLock<
    Vec<(String, &'static str, alloc::sync::Arc<os::KernelOs>)>,
> = crate::sync::SpinLock::new("usb.interrupt_modes", Vec::new());

/// (controller, how it interrupts, interrupts taken so far).
pub fn interrupt_modes() -> Vec<(String, &'static str, u64)> {
    INTERRUPT_MODES
        .lock()
        .iter()
        .map(|(name, mode, os)| {
            (
                name.clone(),
                *mode,
                os.interrupts.load(core::sync::atomic::Ordering::Relaxed),
            )
        })
        .collect()
}

fn bring_up(name: &str, function: &PciFunction) -> Result<Xhci, String> {
    let bar = function.bars[0]
        .filter(|b| b.is_memory())
        .ok_or_else(|| String::from("no memory BAR0"))?;
    tether_pci::enable_bus_master_and_memory(&pci::CONFIG, function.address);
    let os = os::KernelOs::new();
    let interrupts = setup_interrupt(function, &os);
    INTERRUPT_MODES
        .lock()
        .push((String::from(name), interrupts, os.clone()));
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

/// One controller's devices, owned by its thread. Root ports are rescanned whenever the
/// controller reports a port change; a device gone from its port is detached with everything
/// behind it (when it was a hub).
struct Bus {
    name: String,
    number: u8,
    controller: Xhci,
    /// Devices by root port, the root device first, then what sits behind it.
    attached: BTreeMap<u8, Vec<AttachedDevice>>,
}

struct AttachedDevice {
    device: UsbDevice,
    port_path: String,
    life: Arc<DeviceLife>,
    thread: JoinHandle,
    /// For a hub: its state after bring-up, to handle its ports later.
    hub: Option<hub::Hub>,
    driver: Option<&'static str>,
}

impl Bus {
    /// Sleeps until the controller interrupts (or a second passes), handles its events and
    /// any port changes. Never returns.
    fn watch(&mut self) -> ! {
        loop {
            // Waits for the interrupt and drains the event ring, waking whichever threads wait
            // for those completions.
            // A quarter second at most: hub port changes arrive through HUB_EVENTS, which
            // does not interrupt this wait.
            self.controller.wait_for_events(250_000);
            for (hub_path, port) in HUB_EVENTS.take_for(self.number) {
                self.hub_port_changed(&hub_path, port);
            }
            if !self.controller.take_port_changes().is_empty() {
                self.rescan_root_ports();
            }
        }
    }

    /// The boot log's device table: controller, port path, speed, VID:PID, class, driver.
    fn log_table(&self) {
        let summaries: Vec<DeviceSummary> = self
            .attached
            .values()
            .flatten()
            .map(|d| DeviceSummary::new(&self.name, self.number, &d.device, d.driver))
            .collect();
        for line in tether_usb::device::format_table(&summaries).lines() {
            log::info!("{line}");
        }
    }

    fn rescan_root_ports(&mut self) {
        for port in 1..=self.controller.port_count() {
            let status = self.controller.port_status(port);
            self.controller.acknowledge_port_change(port);
            let known = self.attached.contains_key(&port);
            if known && (!status.connected || status.connect_changed) {
                self.detach_port(port);
            }
            if status.connected && !self.attached.contains_key(&port) {
                self.attach_port(port);
            }
        }
    }

    fn attach_port(&mut self, port: u8) {
        let speed = match self.controller.reset_port(port) {
            Ok(speed) => speed,
            Err(error) => {
                log::warn!("{}: port {port}: reset failed: {error}", self.name);
                return;
            }
        };
        let at = Attachment {
            root_port: port,
            route: 0,
            speed,
            tt: None,
        };
        match enumerate(&mut self.controller, at, LANGUAGE) {
            Ok(device) => {
                let mut devices = Vec::new();
                self.attach(device, 1, &mut devices);
                self.attached.insert(port, devices);
            }
            Err(error) => log::warn!("{}: port {port}: {error}", self.name),
        }
    }

    /// Records a new device and starts its thread; a hub's ports are scanned in turn (at most
    /// five tiers deep, as USB allows).
    fn attach(&mut self, device: UsbDevice, tier: u8, out: &mut Vec<AttachedDevice>) {
        let summary = DeviceSummary::new(&self.name, self.number, &device, None);
        let qualifier_stall = self.check_ep0_protocol_stall(&device);
        let driver = find_driver(&device);
        log::info!(
            "attached {} {} {:04x}:{:04x} {:?} {} '{}' ({})",
            self.name,
            summary.port_path,
            summary.vid,
            summary.pid,
            summary.speed,
            summary.class_name(),
            device.product.as_deref().unwrap_or("-"),
            driver.map_or("no driver", |d| d.name())
        );
        registry::add(registry::DeviceRecord {
            controller: self.name.clone(),
            port_path: summary.port_path.clone(),
            speed: summary.speed,
            vendor_id: summary.vid,
            product_id: summary.pid,
            class: summary.class,
            product: device.product.clone(),
            driver: driver.map(|d| d.name()),
            ep0_stall_recovered: qualifier_stall,
            access: registry::DeviceAccess {
                controller: self.controller.clone(),
                device: device.clone(),
            },
        });
        let life = DeviceLife::new();
        let thread = {
            let ctx = DeviceContext {
                controller: self.controller.clone(),
                device: device.clone(),
                name: format!("{} {}", self.name, summary.port_path),
                life: life.clone(),
            };
            Spawn::new(format!(
                "usb{}-{}",
                self.number,
                summary.port_path.split_once('-').map_or("?", |(_, p)| p)
            ))
            .priority(Priority::Driver)
            .start(move || match driver {
                Some(driver) => driver.run(&ctx),
                // Unbound: nothing to do until the device goes away.
                None => {
                    ctx.life.wait_detached(None);
                }
            })
        };
        let hub_device = hub::is_hub(&device).then(|| device.clone());
        let index = out.len();
        out.push(AttachedDevice {
            device,
            port_path: summary.port_path,
            life,
            thread,
            hub: None,
            driver: driver.map(|d| d.name()),
        });
        let Some(hub_device) = hub_device.filter(|_| tier <= 5) else {
            return;
        };
        let mut delay = |ms: u32| crate::sched::sleep_ms(u64::from(ms));
        let hub = match hub::init_hub(&mut self.controller, &hub_device, &mut delay) {
            Ok(hub) => hub,
            Err(error) => {
                log::warn!("{}: hub: {error}", self.name);
                return;
            }
        };
        out[index].hub = Some(hub.clone());
        for (port, event) in hub::scan_ports(&mut self.controller, &hub, LANGUAGE, &mut delay) {
            match event {
                Ok(hub::PortEvent::Attached(child)) => self.attach(child, tier + 1, out),
                Ok(_) => {}
                Err(error) => log::warn!("{}: hub port {port}: {error}", self.name),
            }
        }
    }

    /// A hub reported a change on one of its ports (through its status endpoint): whatever was
    /// there is detached (with anything behind it), and a device now connected is enumerated.
    fn hub_port_changed(&mut self, hub_path: &str, port: u8) {
        let Some((&root, devices)) = self
            .attached
            .iter()
            .find(|(_, d)| d.iter().any(|e| e.port_path == hub_path))
        else {
            return;
        };
        let Some(hub_entry) = devices.iter().find(|e| e.port_path == hub_path) else {
            return;
        };
        let Some(hub) = hub_entry.hub.clone() else {
            return;
        };
        let tier = hub_path.matches('.').count() as u8 + 1;
        let child_path = format!("{hub_path}.{port}");
        let mut delay = |ms: u32| crate::sched::sleep_ms(u64::from(ms));
        let event = hub::handle_port(&mut self.controller, &hub, port, LANGUAGE, &mut delay);
        match event {
            // A (re)connection: whatever was known there is gone; the new device takes its place.
            Ok(hub::PortEvent::Attached(child)) => {
                self.detach_subtree(root, &child_path);
                let mut added = Vec::new();
                self.attach(child, tier + 1, &mut added);
                if let Some(devices) = self.attached.get_mut(&root) {
                    devices.extend(added);
                }
            }
            Ok(hub::PortEvent::Detached | hub::PortEvent::Empty) => {
                self.detach_subtree(root, &child_path)
            }
            // Still there (a stale or repeated report), or an over-current the hub handles.
            Ok(_) => {}
            Err(error) => log::warn!("{}: hub {hub_path} port {port}: {error}", self.name),
        }
    }

    /// Detaches the device at `path` under root port `root` and everything behind it.
    fn detach_subtree(&mut self, root: u8, path: &str) {
        let Some(devices) = self.attached.get_mut(&root) else {
            return;
        };
        let below = format!("{path}.");
        let (mut gone, kept): (Vec<_>, Vec<_>) = core::mem::take(devices)
            .into_iter()
            .partition(|e| e.port_path == path || e.port_path.starts_with(&below));
        *devices = kept;
        // Deepest first.
        gone.sort_by_key(|e| core::cmp::Reverse(e.port_path.len()));
        for entry in gone {
            self.detach_entry(entry);
        }
    }

    /// Full-speed-only devices answer GET_DESCRIPTOR(device qualifier) with a protocol STALL.
    /// Asking tells a USB 2 device's capabilities, and proves EP0 recovers: a GET_STATUS must
    /// succeed right after. Returns Some(true) when it stalled and recovered.
    fn check_ep0_protocol_stall(&mut self, device: &UsbDevice) -> Option<bool> {
        if device.descriptor.usb_version < 0x0200 {
            return None;
        }
        match probe_device_qualifier(&mut self.controller, device) {
            Ok(Some(_)) => None,
            Ok(None) => {
                let mut status = [0u8; 2];
                let recovered = self
                    .controller
                    .control_transfer(
                        device.handle,
                        SetupPacket::get_status(rt::DEVICE, 0),
                        &mut status,
                        1000,
                    )
                    .is_ok();
                log::debug!("{}: EP0 protocol stall on GET_DESCRIPTOR(device qualifier), recovered: {recovered}", self.name);
                Some(recovered)
            }
            Err(error) => {
                log::warn!("{}: device qualifier: {error}", self.name);
                Some(false)
            }
        }
    }

    /// Detaches everything under a root port, deepest first: the device's thread is told, the
    /// controller fails its transfers and forgets it, and the thread gets a bounded time to end.
    fn detach_port(&mut self, port: u8) {
        let Some(mut devices) = self.attached.remove(&port) else {
            return;
        };
        while let Some(entry) = devices.pop() {
            self.detach_entry(entry);
        }
    }

    /// The device's thread is told, the controller fails its transfers and forgets it, and the
    /// thread gets a bounded time to end.
    fn detach_entry(&mut self, entry: AttachedDevice) {
        // Marked detached first, so the driver takes the Disconnected errors that follow as
        // the end, not a failure. device_gone fails everything pending (a driver waiting on
        // a transfer returns at once and runs its detach), disables the slot, frees it all.
        entry.life.detach();
        if let Err(error) = self.controller.device_gone(entry.device.handle) {
            log::debug!("{}: {}: {error}", self.name, entry.port_path);
        }
        if !entry.thread.join_timeout(2_000_000_000) {
            log::warn!(
                "{}: {}: device thread did not finish within 2 s",
                self.name,
                entry.port_path
            );
        }
        registry::remove(&self.name, &entry.port_path);
        log::info!(
            "detached {} {} {:04x}:{:04x}",
            self.name,
            entry.port_path,
            entry.device.descriptor.vendor,
            entry.device.descriptor.product
        );
    }
}
