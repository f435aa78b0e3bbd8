//! The lock checker (after FreeBSD's WITNESS). Every checked lock belongs to a class named by
//! a static string. Each thread (and each CPU's interrupt context) keeps the list of locks it
//! holds; on every acquire kcore's `LockOrder` learns "held before acquired" and reports an
//! inversion with both names and sites. Blocking while holding a SpinLock panics, naming it.
//! Switchable at boot (`lockcheck=on|off`); on by default in debug builds.

use core::panic::Location;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};

use tether_kcore::lockorder::{ClassId, LockOrder, Site};

use super::raw::RawSpinLock;
use crate::arch::interrupts;
use crate::cpu;

static ENABLED: AtomicBool = AtomicBool::new(cfg!(debug_assertions));
static ORDER: RawSpinLock<LockOrder> = RawSpinLock::new(LockOrder::new());
static INVERSIONS: AtomicU64 = AtomicU64::new(0);
static LAST_INVERSION: RawSpinLock<Option<(&'static str, &'static str)>> = RawSpinLock::new(None);

const MAX_HELD: usize = 32;

pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Inversions reported since boot.
pub fn inversions() -> u64 {
    INVERSIONS.load(Ordering::Relaxed)
}

/// (held, acquiring) class names of the latest inversion.
pub fn last_inversion() -> Option<(&'static str, &'static str)> {
    *LAST_INVERSION.lock()
}

/// A lock class: the name, and the id the order graph gave it (0 = not yet asked).
pub struct LockClass {
    name: &'static str,
    id: AtomicU16,
}

impl LockClass {
    pub const fn new(name: &'static str) -> LockClass {
        LockClass {
            name,
            id: AtomicU16::new(0),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    fn id(&self, order: &mut LockOrder) -> Option<ClassId> {
        match self.id.load(Ordering::Relaxed) {
            0 => {
                let id = order.class(self.name)?;
                self.id.store(id.0 + 1, Ordering::Relaxed);
                Some(id)
            }
            n => Some(ClassId(n - 1)),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Spin,
    Sleep,
}

#[derive(Clone, Copy)]
struct Held {
    class: Option<ClassId>,
    name: &'static str,
    site: Site,
    kind: LockKind,
    instance: usize,
}

/// The locks one thread (or one CPU's interrupt context) holds, innermost last.
pub struct HeldLocks {
    entries: [Option<Held>; MAX_HELD],
    len: usize,
}

impl HeldLocks {
    pub const fn new() -> HeldLocks {
        HeldLocks {
            entries: [None; MAX_HELD],
            len: 0,
        }
    }

    fn iter(&self) -> impl DoubleEndedIterator<Item = &Held> {
        self.entries[..self.len].iter().flatten()
    }

    fn push(&mut self, held: Held) {
        if self.len < MAX_HELD {
            self.entries[self.len] = Some(held);
            self.len += 1;
        }
    }

    fn remove(&mut self, instance: usize) {
        if let Some(pos) = self.entries[..self.len]
            .iter()
            .rposition(|e| e.is_some_and(|h| h.instance == instance))
        {
            self.entries.copy_within(pos + 1..self.len, pos);
            self.len -= 1;
            self.entries[self.len] = None;
        }
    }
}

/// The held-lock list of whatever is running: the interrupted CPU's list in interrupt
/// context or before threads exist, else the current thread's.
fn with_held<R>(f: impl FnOnce(&mut HeldLocks) -> R) -> Option<R> {
    let cpu = cpu::try_this()?;
    let was_on = interrupts::disable_save();
    let list = if cpu.irq_depth.load(Ordering::Relaxed) > 0 || !crate::sched::started() {
        cpu.irq_held_locks.get()
    } else {
        crate::sched::current_ref().held_locks.get()
    };
    // SAFETY: the list belongs to this CPU's current context and interrupts are off, so
    // nothing else can touch it now.
    let result = f(unsafe { &mut *list });
    interrupts::restore(was_on);
    Some(result)
}

/// Checks the order before a lock is taken (so an inversion is reported even if it then
/// deadlocks), and records the lock as held.
pub fn on_acquire(
    class: &LockClass,
    kind: LockKind,
    instance: usize,
    location: &'static Location<'static>,
) {
    if !enabled() {
        return;
    }
    let site = Site::from(location);
    with_held(|held| {
        let mut order = ORDER.lock();
        let id = class.id(&mut order);
        if let Some(id) = id {
            let mut pairs = [(ClassId(0), site); MAX_HELD];
            let mut n = 0;
            for h in held.iter() {
                if let Some(c) = h.class {
                    pairs[n] = (c, h.site);
                    n += 1;
                }
            }
            if let Some(inversion) = order.on_acquire(&pairs[..n], id, site) {
                INVERSIONS.fetch_add(1, Ordering::Relaxed);
                *LAST_INVERSION.lock() = Some((inversion.held_name(), inversion.acquiring_name()));
                drop(order);
                log::warn!(target: "lockcheck", "{inversion}");
            }
        }
        held.push(Held {
            class: id,
            name: class.name,
            site,
            kind,
            instance,
        });
    });
}

pub fn on_release(instance: usize) {
    if !enabled() {
        return;
    }
    with_held(|held| held.remove(instance));
}

/// Every blocking primitive calls this first.
#[track_caller]
pub fn assert_may_block(what: &str) {
    if enabled() {
        let spin = with_held(|held| {
            held.iter()
                .rev()
                .find(|h| h.kind == LockKind::Spin)
                .copied()
        })
        .flatten();
        if let Some(h) = spin {
            panic!(
                "{what}: sleeping while holding spin lock '{}' (taken at {}:{}) at {}",
                h.name,
                h.site.file,
                h.site.line,
                Location::caller()
            );
        }
    }
    if cpu::in_interrupt() {
        panic!(
            "{what}: blocking in interrupt context at {}",
            Location::caller()
        );
    }
    if !interrupts::are_enabled() {
        panic!(
            "{what}: blocking with interrupts disabled at {}",
            Location::caller()
        );
    }
}

pub fn assert_no_locks_held_at_exit(thread: &crate::sched::Thread) {
    if !enabled() {
        return;
    }
    // SAFETY: called by the exiting thread itself with interrupts off.
    let held = unsafe { &*thread.held_locks.get() };
    if let Some(h) = held.iter().next() {
        panic!(
            "thread '{}' exited holding lock '{}' (taken at {}:{})",
            thread.name(),
            h.name,
            h.site.file,
            h.site.line
        );
    }
}
