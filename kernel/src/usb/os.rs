//! What the xHCI driver needs from the kernel: time, sleeping, and waiting for its interrupt.
//! The MSI-X (or MSI) handler only releases the controller's semaphore; the thread that waits
//! drains the event ring. On a level-triggered INTx line the handler also masks the line (it
//! stays asserted until the thread has cleared the interrupter's pending bit), and the thread
//! unmasks it when it goes back to waiting.

use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tether_xhci::controller::{Completion, Os};

use crate::sync::raw::RawSpinLock;
use crate::sync::Semaphore;
use crate::{sched, time};

pub struct KernelOs {
    interrupt: Semaphore,
    /// Interrupts taken (all kinds), for diagnostics and tests.
    pub interrupts: AtomicU64,
    /// The GSI of a level-triggered INTx line, or [`NO_INTX`].
    intx_gsi: AtomicU32,
}

const NO_INTX: u32 = u32::MAX;

impl KernelOs {
    pub fn new() -> Arc<KernelOs> {
        Arc::new(KernelOs {
            interrupt: Semaphore::new(0),
            interrupts: AtomicU64::new(0),
            intx_gsi: AtomicU32::new(NO_INTX),
        })
    }

    /// The controller interrupts on this level-triggered INTx line.
    pub fn use_intx(&self, gsi: u32) {
        self.intx_gsi.store(gsi, Ordering::Release);
    }
}

impl Os for KernelOs {
    fn now_us(&self) -> u64 {
        time::now_us()
    }

    fn delay_us(&self, us: u64) {
        sched::sleep_ns(us * 1000);
    }

    fn wait_for_interrupt(&self, timeout_us: u64) {
        let gsi = self.intx_gsi.load(Ordering::Acquire);
        if gsi != NO_INTX {
            // Events drained: let the line interrupt again.
            crate::arch::ioapic::unmask(gsi);
        }
        self.interrupt.down_timeout(timeout_us * 1000);
    }

    fn completion(&self) -> Arc<dyn Completion> {
        Arc::new(SemaphoreCompletion(Semaphore::new(0)))
    }
}

/// One command's or transfer's completion: the controller thread signals, the submitter waits.
struct SemaphoreCompletion(Semaphore);

impl Completion for SemaphoreCompletion {
    fn signal(&self) {
        self.0.up();
    }

    fn wait(&self, timeout_us: u64) -> bool {
        self.0.down_timeout(timeout_us * 1000)
    }
}

/// Which controller an interrupt vector belongs to.
static BY_VECTOR: RawSpinLock<Vec<(u8, Arc<KernelOs>)>> = RawSpinLock::new(Vec::new());

pub fn register_vector(vector: u8, os: Arc<KernelOs>) {
    BY_VECTOR.lock().push((vector, os));
}

/// Until when (us) controller interrupts are dropped (fault injection `drop-irq`; 0: never).
static DROP_UNTIL_US: AtomicU64 = AtomicU64::new(0);
/// Interrupts dropped on purpose.
pub static DROPPED_INTERRUPTS: AtomicU64 = AtomicU64::new(0);

/// Fault injection: the controllers' interrupts are lost for `us` (they are acknowledged but
/// wake nobody; the controller threads' bounded waits find the events later).
pub fn drop_interrupts(us: u64) {
    DROP_UNTIL_US.store(time::now_us() + us, Ordering::Release);
}

/// Interrupt context: wake the controller's waiter, nothing else.
pub fn controller_interrupt(vector: u8) {
    if time::now_us() < DROP_UNTIL_US.load(Ordering::Acquire) {
        DROPPED_INTERRUPTS.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let list = BY_VECTOR.lock();
    if let Some((_, os)) = list.iter().find(|(v, _)| *v == vector) {
        os.interrupts.fetch_add(1, Ordering::Relaxed);
        let gsi = os.intx_gsi.load(Ordering::Acquire);
        if gsi != NO_INTX {
            crate::arch::ioapic::mask(gsi);
        }
        os.interrupt.up();
    }
}
