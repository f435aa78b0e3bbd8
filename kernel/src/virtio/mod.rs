//! virtio devices on PCI, through the `virtio-drivers` crate: the kernel supplies its `Hal`
//! (DMA, MMIO) and configuration-space access (`hal.rs`), a transport that also programs
//! MSI-X vectors (`transport.rs`); the drivers (`net.rs`) run in threads of their own.

mod hal;
mod net;
mod netdev;
mod transport;

pub use net::report;

use alloc::format;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tether_pci::PciFunction;

use crate::pci;
use crate::sched::{Priority, Spawn};
use crate::sync::raw::RawSpinLock;
use crate::sync::Semaphore;

const VIRTIO_VENDOR: u16 = 0x1af4;
/// virtio-net's transitional ID (legacy and modern interfaces both offered; QEMU's default
/// `virtio-net-pci`) and its modern-only ID (`disable-legacy=on`). The transitional device is
/// driven through its modern interface like the other: refusing it, as Hermit does for every
/// ID below 0x1040, leaves the most common virtio NIC unused.
const NET_TRANSITIONAL: u16 = 0x1000;
const NET_MODERN: u16 = 0x1041;

pub fn is_virtio_net(function: &PciFunction) -> bool {
    function.vendor_id == VIRTIO_VENDOR
        && matches!(function.device_id, NET_TRANSITIONAL | NET_MODERN)
}

/// Starts a driver thread (`virtio-net1`, ...) per virtio-net function. Interface names are
/// taken here, in PCI order, before USB starts: PCI NICs get the first names (`eth0`, ...)
/// whatever the timing, so `ip.eth1=` means the same interface on every boot.
pub fn start() {
    for (index, function) in pci::functions()
        .iter()
        .filter(|f| is_virtio_net(f))
        .enumerate()
    {
        let interface = crate::net::next_name();
        let function = function.clone();
        Spawn::new(format!("virtio-net{}", index + 1))
            .priority(Priority::Driver)
            .stack_size(net::STACK_SIZE)
            .start(move || net::run(function, interface));
    }
}

/// What a device's interrupt handlers signal to its thread.
pub struct Wakeup {
    pub semaphore: Semaphore,
    /// Set by the configuration-change vector (link status).
    pub config_changed: AtomicBool,
    pub queue_interrupts: AtomicU64,
    pub config_interrupts: AtomicU64,
}

impl Wakeup {
    fn new() -> Arc<Wakeup> {
        Arc::new(Wakeup {
            semaphore: Semaphore::new(0),
            config_changed: AtomicBool::new(false),
            queue_interrupts: AtomicU64::new(0),
            config_interrupts: AtomicU64::new(0),
        })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cause {
    Queues,
    Config,
}

/// Which device and cause each vector belongs to (the handler's only lookup).
static BY_VECTOR: RawSpinLock<Vec<(u8, Cause, Arc<Wakeup>)>> = RawSpinLock::new(Vec::new());

/// Interrupt context: count, note a configuration change, wake the device's thread. The
/// virtqueues need no acknowledgement with MSI-X (the ISR register is for INTx).
fn interrupt(vector: u8) {
    let list = BY_VECTOR.lock();
    if let Some((_, cause, wakeup)) = list.iter().find(|(v, _, _)| *v == vector) {
        match cause {
            Cause::Queues => wakeup.queue_interrupts.fetch_add(1, Ordering::Relaxed),
            Cause::Config => {
                wakeup.config_changed.store(true, Ordering::Release);
                wakeup.config_interrupts.fetch_add(1, Ordering::Relaxed)
            }
        };
        wakeup.semaphore.up();
    }
}

/// MSI-X entry 0 for the queues, 1 for configuration changes, both aimed at this CPU. None when
/// the function has no MSI-X (or too small a table) or no vector is free: the driver then polls.
fn setup_msix(function: &PciFunction, wakeup: &Arc<Wakeup>) -> Option<transport::MsixEntries> {
    const QUEUES: u16 = 0;
    const CONFIG: u16 = 1;
    if function.msix.is_none_or(|m| m.table_size < 2) {
        return None;
    }
    let apic_id = crate::cpu::this().apic_id;
    for (entry, cause) in [(QUEUES, Cause::Queues), (CONFIG, Cause::Config)] {
        let vector = pci::allocate_vector(interrupt)?;
        BY_VECTOR.lock().push((vector, cause, wakeup.clone()));
        if let Err(error) = pci::enable_msix_entry(function, entry, vector, apic_id) {
            log::warn!("{}: MSI-X entry {entry}: {error:?}", function.address);
            return None;
        }
    }
    Some(transport::MsixEntries {
        queues: QUEUES,
        config: CONFIG,
    })
}
