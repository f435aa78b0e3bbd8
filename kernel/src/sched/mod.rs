//! The scheduler: per-CPU run queues with four priorities (interrupt threads > driver threads >
//! normal > idle), preemption by a one-shot local APIC timer, sleeping with per-CPU timer
//! queues, and an idle thread per CPU that halts.
//!
//! Blocking protocol: with interrupts off, a thread calls [`prepare_block`] (state BLOCKED,
//! new sequence number), publishes the returned [`WakeToken`] where a waker will find it,
//! releases its lock and calls [`block`]. [`wake`] moves BLOCKED->RUNNABLE only for the same
//! sequence number, so late or duplicate wake-ups are harmless, and a wake-up that arrives
//! before the thread has switched away is not lost.

mod switch;
pub mod thread;

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};

use tether_kcore::runqueue::RunQueue;
use thread::{pack, BLOCKED, EXITED, RUNNABLE, RUNNING};
pub use thread::{Priority, Thread};

use crate::arch::{apic, interrupts};
use crate::cpu::{self, PerCpu};
use crate::mem::stacks::KernelStack;
use crate::sync::raw::RawSpinLock;
use crate::time;

/// How long a thread runs before another of equal priority gets the CPU.
const TIME_SLICE_NS: u64 = 10_000_000;
pub const DEFAULT_STACK_SIZE: usize = 64 * 1024;

/// Per-CPU scheduler state.
pub struct CpuSched {
    run_queue: RawSpinLock<RunQueue<Arc<Thread>>>,
    queued: AtomicUsize,
    timers: RawSpinLock<BTreeMap<(u64, u64), WakeToken>>,
    current: AtomicPtr<Thread>,
    current_priority: AtomicU8,
    /// The thread switched away from, released by whoever runs next on this CPU.
    prev: UnsafeCell<Option<Arc<Thread>>>,
    idle_thread: spin::Once<Arc<Thread>>,
    need_resched: AtomicBool,
    idle: AtomicBool,
    slice_end_ns: AtomicU64,
    pub switches: AtomicU64,
}

// SAFETY: `prev` is only touched by the owning CPU with interrupts off.
unsafe impl Sync for CpuSched {}

impl CpuSched {
    pub fn new() -> CpuSched {
        CpuSched {
            run_queue: RawSpinLock::new(RunQueue::with_capacity(64)),
            queued: AtomicUsize::new(0),
            timers: RawSpinLock::new(BTreeMap::new()),
            current: AtomicPtr::new(core::ptr::null_mut()),
            current_priority: AtomicU8::new(0),
            prev: UnsafeCell::new(None),
            idle_thread: spin::Once::new(),
            need_resched: AtomicBool::new(false),
            idle: AtomicBool::new(true),
            slice_end_ns: AtomicU64::new(u64::MAX),
            switches: AtomicU64::new(0),
        }
    }

    pub fn is_idle(&self) -> bool {
        self.idle.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Proof that a particular block of a particular thread may be ended.
#[derive(Clone)]
pub struct WakeToken {
    thread: Arc<Thread>,
    seq: u64,
}

impl WakeToken {
    pub fn thread(&self) -> &Arc<Thread> {
        &self.thread
    }

    pub fn is_for(&self, other: &WakeToken) -> bool {
        Arc::ptr_eq(&self.thread, &other.thread) && self.seq == other.seq
    }
}

static THREADS: RawSpinLock<Vec<Weak<Thread>>> = RawSpinLock::new(Vec::new());
static NEXT_THREAD_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_TIMER_KEY: AtomicU64 = AtomicU64::new(1);
static STARTED: AtomicBool = AtomicBool::new(false);

/// Makes the code already running on this CPU its idle thread and installs the timer and
/// reschedule interrupt handlers. Called once per CPU.
pub fn init_this_cpu(cpu: &'static PerCpu, stack: Option<KernelStack>) {
    let name = alloc::format!("idle{}", cpu.index);
    let idle = Arc::new(Thread::new(
        next_id(),
        name,
        Priority::Idle,
        Some(cpu.index),
        stack,
        None,
        true,
    ));
    idle.state.store(pack(0, RUNNING), Ordering::Relaxed);
    idle.on_cpu.store(true, Ordering::Relaxed);
    idle.ran_since_ns.store(time::now_ns(), Ordering::Relaxed);
    register(&idle);
    cpu.sched.current.store(
        Arc::into_raw(idle.clone()) as *mut Thread,
        Ordering::Release,
    );
    cpu.sched.idle_thread.call_once(|| idle);
    crate::arch::trap::set_handler(apic::TIMER_VECTOR, on_timer_interrupt);
    crate::arch::trap::set_handler(apic::RESCHEDULE_VECTOR, on_reschedule_ipi);
    STARTED.store(true, Ordering::Release);
}

fn next_id() -> u64 {
    NEXT_THREAD_ID.fetch_add(1, Ordering::Relaxed)
}

fn register(thread: &Arc<Thread>) {
    let mut threads = THREADS.lock();
    threads.retain(|t| t.strong_count() > 0);
    threads.push(Arc::downgrade(thread));
}

/// Options for a new thread.
pub struct Spawn {
    name: String,
    priority: Priority,
    affinity: Option<usize>,
    stack_size: usize,
}

impl Spawn {
    pub fn new(name: impl Into<String>) -> Spawn {
        Spawn {
            name: name.into(),
            priority: Priority::Normal,
            affinity: None,
            stack_size: DEFAULT_STACK_SIZE,
        }
    }

    pub fn priority(mut self, priority: Priority) -> Spawn {
        self.priority = priority;
        self
    }

    pub fn pin(mut self, cpu: usize) -> Spawn {
        self.affinity = Some(cpu);
        self
    }

    pub fn stack_size(mut self, bytes: usize) -> Spawn {
        self.stack_size = bytes;
        self
    }

    pub fn start(self, f: impl FnOnce() + Send + 'static) -> JoinHandle {
        let stack = KernelStack::new(self.stack_size).expect("out of memory for a thread stack");
        // SAFETY: the stack top is page-aligned and the stack is freshly mapped.
        let rsp = unsafe { switch::prepare_stack(stack.top(), 0) };
        let affinity = self.affinity.filter(|&c| c < cpu::count());
        let thread = Arc::new(Thread::new(
            next_id(),
            self.name,
            self.priority,
            affinity,
            Some(stack),
            Some(Box::new(f)),
            false,
        ));
        // SAFETY: the thread has not run yet; nobody else reads saved_rsp.
        unsafe { *thread.saved_rsp.get() = rsp };
        register(&thread);
        enqueue(thread.clone());
        JoinHandle { thread }
    }
}

/// Spawns a normal-priority thread.
pub fn spawn(name: impl Into<String>, f: impl FnOnce() + Send + 'static) -> JoinHandle {
    Spawn::new(name).start(f)
}

pub struct JoinHandle {
    thread: Arc<Thread>,
}

impl JoinHandle {
    /// Waits for the thread to finish.
    pub fn join(self) {
        let thread = self.thread.clone();
        self.thread
            .joiners
            .wait_while(None, || !thread.has_exited());
    }

    /// Waits at most `timeout_ns`; returns whether the thread finished.
    pub fn join_timeout(&self, timeout_ns: u64) -> bool {
        let thread = self.thread.clone();
        let deadline = time::now_ns() + timeout_ns;
        self.thread
            .joiners
            .wait_while(Some(deadline), || !thread.has_exited());
        self.thread.has_exited()
    }

    pub fn thread(&self) -> &Arc<Thread> {
        &self.thread
    }
}

#[no_mangle]
extern "C" fn thread_start(_argument: u64) -> ! {
    finish_switch();
    interrupts::enable();
    let thread = current_ref();
    // SAFETY: only this thread touches its entry, once, at start.
    let entry = unsafe { (*thread.entry.get()).take() };
    if let Some(entry) = entry {
        entry();
    }
    exit_current()
}

/// Ends the calling thread.
pub fn exit_current() -> ! {
    interrupts::disable_save();
    let thread = current_ref();
    crate::sync::checker::assert_no_locks_held_at_exit(thread);
    thread.exited.store(true, Ordering::Release);
    let seq = thread.state.load(Ordering::Relaxed) >> 8;
    thread.state.store(pack(seq, EXITED), Ordering::Release);
    thread.joiners.wake_all();
    schedule();
    unreachable!("an exited thread was scheduled again");
}

/// The running thread's pointer, read with interrupts off: finding this CPU and reading its
/// `current` are two loads, and a preemption between them could resume the thread on the
/// other CPU, whose `current` is another thread. (A new thread preempted as it enabled
/// interrupts once took that thread's entry, found none, and exited without running.)
fn current_ptr() -> *const Thread {
    let were_on = interrupts::disable_save();
    let ptr = cpu::this().sched.current.load(Ordering::Acquire);
    interrupts::restore(were_on);
    ptr
}

/// The running thread. Valid as long as the caller runs (the scheduler holds a reference).
pub fn current_ref() -> &'static Thread {
    // SAFETY: `current` always holds a leaked Arc of the running thread, released only after
    // its CPU has switched to another thread; the running thread is the same wherever it runs.
    unsafe { &*current_ptr() }
}

pub fn current() -> Arc<Thread> {
    let ptr = current_ptr();
    // SAFETY: as in current_ref; we add a strong count before making a new Arc from it.
    unsafe {
        Arc::increment_strong_count(ptr);
        Arc::from_raw(ptr)
    }
}

/// For fault and panic reports: never allocates, never blocks.
pub fn current_thread_name() -> &'static str {
    if !STARTED.load(Ordering::Acquire) {
        return "boot";
    }
    match cpu::try_this() {
        Some(c) if !c.sched.current.load(Ordering::Acquire).is_null() => current_ref().name(),
        _ => "boot",
    }
}

pub fn current_stack_guard_contains(addr: u64) -> bool {
    STARTED.load(Ordering::Acquire)
        && cpu::try_this().is_some()
        && current_ref().stack_guard_contains(addr)
}

/// The current thread's stack bounds (for backtraces).
pub fn current_stack_range() -> Option<(u64, u64)> {
    if !STARTED.load(Ordering::Acquire) || cpu::try_this().is_none() {
        return None;
    }
    current_ref().stack_range()
}

pub fn started() -> bool {
    STARTED.load(Ordering::Acquire)
}

/// Gives the CPU to another ready thread of the same or higher priority, if any.
pub fn yield_now() {
    let was_on = interrupts::disable_save();
    schedule();
    interrupts::restore(was_on);
}

/// Sleeps for at least `ns` nanoseconds.
#[track_caller]
pub fn sleep_ns(ns: u64) {
    crate::sync::checker::assert_may_block("sleep");
    let was_on = interrupts::disable_save();
    let token = prepare_block();
    block(&token, Some(time::now_ns() + ns));
    interrupts::restore(was_on);
}

#[track_caller]
pub fn sleep_ms(ms: u64) {
    sleep_ns(ms * 1_000_000);
}

/// First half of blocking; interrupts must be off until [`block`] returns.
pub(crate) fn prepare_block() -> WakeToken {
    let thread = current();
    let seq = (thread.state.load(Ordering::Relaxed) >> 8) + 1;
    thread.state.store(pack(seq, BLOCKED), Ordering::Release);
    WakeToken { thread, seq }
}

/// Second half of blocking: gives up the CPU until woken or `deadline_ns` passes. Returns true
/// when it was the deadline. Interrupts must be off.
pub(crate) fn block(token: &WakeToken, deadline_ns: Option<u64>) -> bool {
    let cpu = cpu::this();
    let timer_key = deadline_ns.map(|deadline| {
        let key = (deadline, NEXT_TIMER_KEY.fetch_add(1, Ordering::Relaxed));
        cpu.sched.timers.lock().insert(key, token.clone());
        (cpu.index, key)
    });
    schedule();
    if let Some((index, key)) = timer_key {
        if let Some(owner) = cpu::get(index) {
            owner.sched.timers.lock().remove(&key);
        }
    }
    token.thread.woke_by_timeout.swap(false, Ordering::AcqRel)
}

/// Ends the block `token` stands for, if it is still going on. Safe in interrupt context.
pub fn wake(token: &WakeToken) -> bool {
    wake_inner(token, false)
}

fn wake_inner(token: &WakeToken, by_timeout: bool) -> bool {
    let from = pack(token.seq, BLOCKED);
    let to = pack(token.seq, RUNNABLE);
    if token
        .thread
        .state
        .compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return false;
    }
    token
        .thread
        .woke_by_timeout
        .store(by_timeout, Ordering::Release);
    enqueue(token.thread.clone());
    true
}

/// Picks a CPU for a ready thread: its pin; else its last CPU if idle; else any idle CPU; else
/// the CPU with the shortest queue.
fn select_cpu(thread: &Thread) -> usize {
    if let Some(pinned) = thread.affinity {
        return pinned;
    }
    let last = thread.last_cpu.load(Ordering::Relaxed);
    let online = |c: &&PerCpu| c.online.load(Ordering::Acquire);
    if let Some(c) = cpu::get(last).filter(online) {
        if c.sched.is_idle() && c.sched.queued() == 0 {
            return last;
        }
    }
    let mut best = (usize::MAX, last);
    for c in (0..cpu::count())
        .filter_map(cpu::get)
        .filter(|c| c.online.load(Ordering::Acquire))
    {
        if c.sched.is_idle() && c.sched.queued() == 0 {
            return c.index;
        }
        let load = c.sched.queued() + 1;
        if load < best.0 {
            best = (load, c.index);
        }
    }
    if cpu::get(best.1).is_some_and(|c| c.online.load(Ordering::Acquire)) {
        best.1
    } else {
        cpu::this().index
    }
}

fn enqueue(thread: Arc<Thread>) {
    let target_index = select_cpu(&thread);
    let target = cpu::get(target_index).unwrap_or_else(cpu::this);
    let priority = thread.priority;
    {
        let mut queue = target.sched.run_queue.lock();
        queue.push(priority, thread);
        target.sched.queued.fetch_add(1, Ordering::Relaxed);
    }
    let preempts = priority as u8 > target.sched.current_priority.load(Ordering::Relaxed);
    if preempts || target.sched.is_idle() {
        if target.index == cpu::this().index {
            // Reschedule at the next point interrupts are on: a self-IPI does exactly that.
            target.sched.need_resched.store(true, Ordering::Relaxed);
            if !cpu::in_interrupt() {
                apic::send_ipi(target.apic_id, apic::RESCHEDULE_VECTOR);
            }
        } else {
            apic::send_ipi(target.apic_id, apic::RESCHEDULE_VECTOR);
        }
    }
}

/// Switches to the best ready thread (or back to the current one). Interrupts must be off.
fn schedule() {
    let cpu = cpu::this();
    let sched = &cpu.sched;
    sched.need_resched.store(false, Ordering::Relaxed);
    let current = current_ref();
    let now = time::now_ns();

    let mut queue = sched.run_queue.lock();
    let state = current.state.load(Ordering::Acquire);
    if state & 0xFF == RUNNING && !current.is_idle {
        current
            .state
            .store(pack(state >> 8, RUNNABLE), Ordering::Release);
        // SAFETY: `current` holds a leaked Arc of the running thread; add a count for the queue.
        let arc = unsafe {
            Arc::increment_strong_count(current as *const Thread);
            Arc::from_raw(current as *const Thread)
        };
        queue.push(current.priority, arc);
        sched.queued.fetch_add(1, Ordering::Relaxed);
    }
    let next = match queue.pop() {
        Some((_, thread)) => {
            sched.queued.fetch_sub(1, Ordering::Relaxed);
            thread
        }
        None => sched.idle_thread.get().expect("idle thread").clone(),
    };
    // Interrupts were already off on entry; they stay off through the switch.
    let _ = queue.unlock_keep_irqs_off();

    if core::ptr::eq(Arc::as_ptr(&next), current) {
        current
            .state
            .store(pack(state >> 8, RUNNING), Ordering::Release);
        program_timer(sched, current.is_idle, now);
        return;
    }
    while next.on_cpu.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    let next_state = next.state.load(Ordering::Acquire);
    next.state
        .store(pack(next_state >> 8, RUNNING), Ordering::Release);
    next.on_cpu.store(true, Ordering::Release);
    next.last_cpu.store(cpu.index, Ordering::Relaxed);
    next.ran_since_ns.store(now, Ordering::Relaxed);
    current.cpu_time_ns.fetch_add(
        now.saturating_sub(current.ran_since_ns.load(Ordering::Relaxed)),
        Ordering::Relaxed,
    );
    sched.switches.fetch_add(1, Ordering::Relaxed);
    sched
        .current_priority
        .store(next.priority as u8, Ordering::Relaxed);
    sched.idle.store(next.is_idle, Ordering::Relaxed);
    program_timer(sched, next.is_idle, now);

    let next_rsp = {
        // SAFETY: `next` is not running anywhere (on_cpu was false) and we own it now.
        unsafe { *next.saved_rsp.get() }
    };
    let next_ptr = Arc::into_raw(next) as *mut Thread;
    let previous = sched.current.swap(next_ptr, Ordering::AcqRel);
    // SAFETY: `previous` is the leaked Arc we just replaced; it is released by finish_switch
    // after this CPU has left its stack. Only this CPU touches `prev`, with interrupts off.
    unsafe {
        *sched.prev.get() = Some(Arc::from_raw(previous));
        switch::context_switch(current.saved_rsp.get(), next_rsp);
    }
    finish_switch();
}

/// Runs on the new thread right after a switch: lets the previous thread be resumed elsewhere
/// (or freed, if it exited).
fn finish_switch() {
    let sched = &cpu::this().sched;
    // SAFETY: only this CPU touches `prev`, with interrupts off.
    let previous = unsafe { (*sched.prev.get()).take() };
    if let Some(previous) = previous {
        previous.on_cpu.store(false, Ordering::Release);
    }
}

fn program_timer(sched: &CpuSched, idle: bool, now: u64) {
    let mut deadline = sched.timers.lock().first_key_value().map(|((d, _), _)| *d);
    if idle {
        sched.slice_end_ns.store(u64::MAX, Ordering::Relaxed);
    } else {
        let slice_end = now + TIME_SLICE_NS;
        sched.slice_end_ns.store(slice_end, Ordering::Relaxed);
        deadline = Some(deadline.map_or(slice_end, |d| d.min(slice_end)));
    }
    match deadline {
        Some(d) => apic::timer_oneshot(time::apic_ticks_for_ns(d.saturating_sub(now).max(20_000))),
        None => apic::timer_oneshot(0),
    }
}

fn on_timer_interrupt(_vector: u8) {
    let sched = &cpu::this().sched;
    let now = time::now_ns();
    loop {
        let expired = {
            let mut timers = sched.timers.lock();
            match timers.first_key_value() {
                Some((&(deadline, _), _)) if deadline <= now => {
                    timers.pop_first().map(|(_, token)| token)
                }
                _ => None,
            }
        };
        match expired {
            Some(token) => {
                wake_inner(&token, true);
            }
            None => break,
        }
    }
    if now >= sched.slice_end_ns.load(Ordering::Relaxed) && sched.queued() > 0 {
        sched.need_resched.store(true, Ordering::Relaxed);
    } else {
        program_timer(sched, current_ref().is_idle, now);
    }
}

fn on_reschedule_ipi(_vector: u8) {
    cpu::this()
        .sched
        .need_resched
        .store(true, Ordering::Relaxed);
}

/// Called when the outermost interrupt handler returns: switch if something asked for it.
pub fn preempt_point_from_interrupt() {
    if !STARTED.load(Ordering::Acquire) {
        return;
    }
    let sched = &cpu::this().sched;
    if sched.need_resched.load(Ordering::Relaxed) {
        schedule();
    }
}

/// Takes a ready, unpinned thread from a busier CPU (the idle loop calls this before halting).
fn steal_work(me: &PerCpu) -> bool {
    for victim in (0..cpu::count())
        .filter(|&i| i != me.index)
        .filter_map(cpu::get)
    {
        if victim.sched.queued() == 0 {
            continue;
        }
        let Some(mut queue) = victim.sched.run_queue.try_lock() else {
            continue;
        };
        let Some((priority, thread)) = queue.remove_where(|t| t.affinity.is_none()) else {
            continue;
        };
        victim.sched.queued.fetch_sub(1, Ordering::Relaxed);
        drop(queue);
        me.sched.run_queue.lock().push(priority, thread);
        me.sched.queued.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    false
}

/// The idle thread's loop: run whatever is ready, else halt until an interrupt.
pub fn idle_loop() -> ! {
    loop {
        interrupts::disable_save();
        let me = cpu::this();
        if me.sched.queued() > 0 || steal_work(me) {
            schedule();
            interrupts::enable();
            continue;
        }
        interrupts::enable_and_halt();
    }
}

/// A line of `threads` output.
pub struct ThreadInfo {
    pub id: u64,
    pub name: String,
    pub priority: Priority,
    pub state: &'static str,
    pub cpu: usize,
    pub cpu_time_ns: u64,
}

pub fn threads() -> Vec<ThreadInfo> {
    let alive: Vec<Arc<Thread>> = THREADS.lock().iter().filter_map(Weak::upgrade).collect();
    alive
        .iter()
        .map(|t| ThreadInfo {
            id: t.id,
            name: String::from(t.name()),
            priority: t.priority,
            state: t.state_name(),
            cpu: t.last_cpu(),
            cpu_time_ns: t.cpu_time_ns(),
        })
        .collect()
}
