//! The xHCI controller driver: bring-up (BIOS handoff, halt, reset, DCBAA, scratchpads, command
//! ring, event ring on interrupter 0), commands with timeouts, port handling, device slots,
//! control transfers on EP0, and bulk/interrupt [`Pipe`]s, behind
//! [`tether_usb::host::HostController`].
//!
//! [`Controller`] is a cheap clonable handle (`Arc`), `Send + Sync`, every method `&self`.
//! Its state sits behind short, non-blocking critical sections of the kernel's raw mutex `R`
//! (MMIO writes, ring enqueue, queue bookkeeping); no lock is held while waiting. Lock order:
//! event ring > command ring > device table > a device's endpoint table > one endpoint >
//! registers > counters.
//!
//! Waiting: every command and transfer gets a [`Completion`] from [`Os::completion`];
//! [`Controller::process_events`] (run by the kernel's controller thread after each interrupt,
//! see [`Controller::wait_for_events`]) matches completion events to their waiters and signals
//! them. While a thread is parked in [`Controller::wait_for_events`], waiters sleep on their
//! completion and drain the ring themselves only when a slice of [`MAX_IRQ_WAIT_US`] passes
//! without a signal; otherwise (no event thread, or it is busy, e.g. enumerating on its own
//! thread) they drain the ring themselves between [`Os::wait_for_interrupt`] calls, as during
//! boot enumeration. A wedged or missing event thread costs latency, never progress.
//!
//! Register access goes through the `xhci` crate's accessors over a [`Mapper`] the kernel
//! supplies. Two raw accessors are built here because the crate's cannot do the job (see
//! `Hw::doorbells` and [`crate::port`]).

use crate::completion::{check, UsbError};
use crate::context::{self, ContextSize, EndpointKind, EndpointParams, InputContext, SlotParams};
use crate::dma::{DmaError, DmaMemory, DmaRegion};
use crate::event::{Event, EventRing};
use crate::pipe::{Endpoint, EndpointConfig, HostOps, Pipe, PipeInfo, PipeKind};
use crate::port::{self, PortProtocol};
use crate::ring::{CommandRing, TransferRing};
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::sync::{Arc, Weak};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use lock_api::{Mutex, RawMutex};
use tether_usb::host::{Attachment, DeviceHandle, HostController, PortStatus, TransferError};
use tether_usb::request::SetupPacket;
use tether_usb::speed::Speed;
use xhci::accessor::{array, Mapper};
use xhci::extended_capabilities::{self, ExtendedCapability};
use xhci::registers::doorbell;
use xhci::ring::trb::event::CompletionCode;
use xhci::ring::trb::{command, transfer};
use xhci::Registers;

/// A one-shot wake-up for one command or transfer (the kernel implements it with a semaphore
/// of count 0). `signal` may come before `wait`, from another thread.
pub trait Completion: Send + Sync {
    /// Wakes the waiter (or lets its next `wait` return at once).
    fn signal(&self);
    /// Waits until signalled or `timeout_us` passes; true if signalled.
    fn wait(&self, timeout_us: u64) -> bool;
}

/// What the controller needs from the OS. The kernel implements it; tests fake it.
pub trait Os: Send + Sync {
    /// Monotonic microseconds.
    fn now_us(&self) -> u64;
    /// Sleeps the calling thread (thread context only).
    fn delay_us(&self, us: u64);
    /// Blocks until this controller's interrupter fires or `timeout_us` passes; may return
    /// early. The kernel's MSI-X handler wakes it.
    fn wait_for_interrupt(&self, timeout_us: u64);
    /// A new, unsignalled completion for one command or transfer.
    fn completion(&self) -> Arc<dyn Completion>;
}

/// What the raw-mutex type parameter must be: a `lock_api` raw mutex usable from any thread.
/// It guards short, non-blocking critical sections only and is never taken in interrupt
/// context.
pub trait RawLock: RawMutex + Send + Sync + 'static {}
impl<T: RawMutex + Send + Sync + 'static> RawLock for T {}

/// What the MMIO mapper type parameter must be.
pub trait Mmio: Mapper + Clone + Send + Sync + 'static {}
impl<T: Mapper + Clone + Send + Sync + 'static> Mmio for T {}

/// The default raw mutex: `spin`'s (a plain spin lock).
pub type DefaultRawMutex = spin::Mutex<()>;

/// Bring-up failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XhciError {
    /// DMA allocation failed.
    Dma(DmaError),
    /// The controller has no 64-bit addressing and the DMA allocator handed out memory above
    /// 4 GiB.
    DmaAbove4G(u64),
    /// A register wait ran out of time (which one).
    Timeout(&'static str),
    /// The controller reports something this driver cannot work with.
    Unsupported(&'static str),
}

impl From<DmaError> for XhciError {
    fn from(e: DmaError) -> Self {
        XhciError::Dma(e)
    }
}

impl fmt::Display for XhciError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XhciError::Dma(e) => write!(f, "xHCI: {e}"),
            XhciError::DmaAbove4G(p) => write!(f, "xHCI: DMA address {p:#x} above 4 GiB, AC64=0"),
            XhciError::Timeout(what) => write!(f, "xHCI: timed out waiting for {what}"),
            XhciError::Unsupported(what) => write!(f, "xHCI: unsupported: {what}"),
        }
    }
}

impl From<UsbError> for TransferError {
    fn from(e: UsbError) -> Self {
        match e {
            UsbError::Stall => TransferError::Stall,
            UsbError::Babble => TransferError::Babble,
            UsbError::TransactionError | UsbError::SplitTransaction => TransferError::Transaction,
            UsbError::Timeout => TransferError::Timeout,
            UsbError::Disconnected => TransferError::Disconnected,
            UsbError::PipeHalted => TransferError::PipeHalted,
            UsbError::NoSlots => TransferError::NoResources("device slots"),
            UsbError::Resource => TransferError::NoResources("controller resources"),
            UsbError::Bandwidth | UsbError::SecondaryBandwidth => {
                TransferError::NoResources("bandwidth")
            }
            other => TransferError::Controller(format!("{other}")),
        }
    }
}

/// BIOS handoff: how long the BIOS gets to release the controller before we take it.
pub const BIOS_HANDOFF_TIMEOUT_US: u64 = 1_000_000;
/// Halt (USBSTS.HCH after clearing R/S): the spec allows 16 ms; some parts take longer.
pub const HALT_TIMEOUT_US: u64 = 100_000;
/// HCRST and CNR clearing after a reset.
pub const RESET_TIMEOUT_US: u64 = 1_000_000;
/// Default time a command may take before it is aborted.
pub const COMMAND_TIMEOUT_US: u64 = 1_000_000;
/// Time the controller gets to stop the command ring after Command Abort.
pub const ABORT_TIMEOUT_US: u64 = 1_000_000;
/// USB 2 port reset: PRC should come after 10-20 ms of reset signalling.
pub const PORT_RESET_TIMEOUT_US: u64 = 500_000;
/// USB 3 ports: link training after connect.
pub const USB3_ENABLE_TIMEOUT_US: u64 = 200_000;
/// USB 2.0 7.1.7.5 TRSTRCY: reset recovery before the first request.
pub const RESET_RECOVERY_US: u64 = 10_000;
/// Polling step for register waits.
const POLL_US: u64 = 500;
/// Longest single wait_for_interrupt while a command or transfer is outstanding: a missed
/// interrupt costs at most this much.
pub const MAX_IRQ_WAIT_US: u64 = 10_000;
/// Interrupter moderation interval in 250 ns units: 1000 = 250 µs, at most 4000 interrupts/s.
/// Each interrupt drains every pending event, so this bounds interrupt load under bulk traffic
/// (TCG guests pay a lot per interrupt) while adding at most 250 µs to a control transfer.
pub const IMOD_INTERVAL: u16 = 1000;
/// CLEAR_FEATURE(ENDPOINT_HALT) timeout in `clear_halt`.
pub const CLEAR_HALT_TIMEOUT_MS: u32 = 1000;
/// The per-device EP0 bounce buffer; control transfers are limited to it.
pub const EP0_BUFFER_BYTES: usize = 4096;
/// Enabled device slots are capped at this.
pub const MAX_SLOTS_ENABLED: u8 = 64;

/// What bring-up found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInfo {
    /// HCIVERSION (BCD, e.g. 0x100).
    pub version: u16,
    /// HCSPARAMS1.MaxSlots.
    pub max_slots: u8,
    /// Slots enabled (CONFIG.MaxSlotsEn).
    pub slots_enabled: u8,
    /// HCSPARAMS1.MaxPorts.
    pub max_ports: u8,
    /// HCSPARAMS1.MaxIntrs.
    pub max_interrupters: u16,
    /// HCCPARAMS1.CSZ.
    pub context_size: ContextSize,
    /// HCCPARAMS1.AC64.
    pub ac64: bool,
    /// Scratchpad buffers allocated (HCSPARAMS2).
    pub scratchpads: u32,
    /// PAGESIZE in bytes.
    pub page_size: usize,
    /// The USB Legacy Support capability was present and the BIOS had to be asked.
    pub bios_handoff: Option<HandoffResult>,
    /// Per Supported Protocol capability: major revision and its port range.
    pub protocols: Vec<PortProtocol>,
}

impl ControllerInfo {
    /// Root ports (1-based, inclusive range) with major revision `major`.
    pub fn ports_of(&self, major: u8) -> Vec<(u8, u8)> {
        self.protocols
            .iter()
            .filter(|p| p.major == major && p.count > 0)
            .map(|p| (p.first_port, p.first_port + p.count - 1))
            .collect()
    }
}

/// How the BIOS handoff went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandoffResult {
    /// The BIOS did not own the controller.
    NotOwned,
    /// The BIOS released it in time.
    Released,
    /// The BIOS did not answer within [`BIOS_HANDOFF_TIMEOUT_US`]; ownership was forced.
    Forced,
}

/// Counters per controller.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Commands issued.
    pub commands: u64,
    /// Commands that completed with an error code.
    pub command_errors: u64,
    /// Commands that timed out and were aborted.
    pub command_timeouts: u64,
    /// Events consumed.
    pub events: u64,
    /// Port Status Change Events.
    pub port_events: u64,
    /// Transfer events for slots that no longer exist (or never did).
    pub stray_events: u64,
    /// Control transfers started.
    pub transfers: u64,
    /// Control transfers that ended in STALL.
    pub stalls: u64,
    /// ... in babble.
    pub babble: u64,
    /// ... in transaction / split transaction errors.
    pub transaction_errors: u64,
    /// ... in a timeout.
    pub timeouts: u64,
    /// ... in any other error.
    pub other_errors: u64,
    /// Endpoint recoveries (Reset Endpoint and/or Set TR Dequeue Pointer).
    pub recoveries: u64,
    /// Host System Error seen in USBSTS.
    pub host_system_errors: u64,
}

/// A command's completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandDone {
    /// Slot ID field of the event.
    pub slot: u8,
    /// Command Completion Parameter.
    pub parameter: u32,
}

/// Registers: touched only under the `hw` lock.
struct Hw<M: Mmio> {
    regs: Registers<M>,
    /// Doorbell array with MaxSlots + 1 entries: the crate's accessor has only MaxSlots, which
    /// leaves out the doorbell of the highest slot ID.
    doorbells: array::ReadWrite<doorbell::Register, M>,
    /// PORTSC dwords as raw `u32` (4 per port) for writes: the crate's PORTSC type cannot write
    /// 0 to the RW1S Port Reset / Warm Port Reset bits it has read as 1.
    ports_raw: array::ReadWrite<u32, M>,
}

struct CmdWaiter {
    result: spin::Once<Result<CommandDone, UsbError>>,
    completion: Arc<dyn Completion>,
}

struct CmdState {
    ring: CommandRing,
    /// Waiters by command TRB pointer (commands nobody waits for have none).
    pending: BTreeMap<u64, Arc<CmdWaiter>>,
}

struct Device<R: RawLock> {
    output: DmaRegion,
    ep0: Arc<Endpoint<R>>,
    /// EP0 bounce buffer, used by whoever holds `ep0_busy`.
    ep0_buf: DmaRegion,
    ep0_busy: AtomicBool,
    ep0_max_packet: AtomicU16,
    speed: Speed,
    at: Attachment,
    /// By DCI (0..32); EP0 at 1.
    endpoints: Mutex<R, Vec<Option<Arc<Endpoint<R>>>>>,
}

impl<R: RawLock> Device<R> {
    fn all_endpoints(&self) -> Vec<Arc<Endpoint<R>>> {
        self.endpoints.lock().iter().flatten().cloned().collect()
    }
}

struct Inner<M: Mmio, R: RawLock> {
    me: Weak<Inner<M, R>>,
    hw: Mutex<R, Hw<M>>,
    dma: Box<dyn DmaMemory + Send + Sync>,
    os: Arc<dyn Os>,
    info: ControllerInfo,
    dcbaa: DmaRegion,
    _scratchpad_array: Option<DmaRegion>,
    _scratchpads: Vec<DmaRegion>,
    cmd: Mutex<R, CmdState>,
    events: Mutex<R, EventRing>,
    /// Indexed by slot ID.
    devices: Mutex<R, Vec<Option<Arc<Device<R>>>>>,
    /// Slots whose Disable Slot failed: their memory stays allocated (the controller may
    /// still own it).
    zombies: Mutex<R, Vec<Arc<Device<R>>>>,
    /// Port Status Change Events seen, indexed by port number.
    port_changed: Mutex<R, Vec<bool>>,
    command_timeout_us: AtomicU64,
    dead: AtomicBool,
    /// A thread is parked in [`Controller::wait_for_events`] right now, ready to drain the
    /// ring on the next interrupt: waiters sleep on their completions. Otherwise (no event
    /// thread, or it is busy, e.g. enumerating) they drain the ring themselves.
    event_waiting: AtomicBool,
    /// One command abort at a time.
    aborting: AtomicBool,
    counters: Mutex<R, Counters>,
}

/// An xHCI controller: a cheap clonable handle. `R` is the raw mutex of its internal critical
/// sections (the kernel's; [`DefaultRawMutex`] unless given).
pub struct Controller<M: Mmio, R: RawLock = DefaultRawMutex> {
    inner: Arc<Inner<M, R>>,
}

impl<M: Mmio, R: RawLock> Clone for Controller<M, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

fn check_dma(ac64: bool, r: &DmaRegion) -> Result<(), XhciError> {
    let end = r.phys() + r.len_bytes() as u64;
    if !ac64 && end > 1 << 32 {
        return Err(XhciError::DmaAbove4G(r.phys()));
    }
    Ok(())
}

fn write_u64(r: &DmaRegion, word: usize, v: u64) {
    r.write(word, v as u32);
    r.write(word + 1, (v >> 32) as u32);
}

/// Copies `bytes` into the start of `r` (little-endian words).
pub(crate) fn copy_to_dma(r: &DmaRegion, bytes: &[u8]) {
    r.copy_in(bytes);
}

/// Copies the start of `r` into `out`.
pub(crate) fn copy_from_dma(r: &DmaRegion, out: &mut [u8]) {
    r.copy_out(out);
}

fn ctx_speed(s: Speed) -> context::Speed {
    match s {
        Speed::Low => context::Speed::Low,
        Speed::Full => context::Speed::Full,
        Speed::High => context::Speed::High,
        Speed::Super => context::Speed::Super,
        Speed::SuperPlus => context::Speed::SuperPlus,
    }
}

/// EP0 max packet size programmed by Address Device: full speed starts at 64 (like Linux: a
/// device with a smaller bMaxPacketSize0 answers the first short read with one short packet),
/// fixed up with Evaluate Context once bMaxPacketSize0 is known.
pub fn initial_ep0_max_packet(speed: Speed) -> u16 {
    match speed {
        Speed::Low => 8,
        Speed::Full | Speed::High => 64,
        Speed::Super | Speed::SuperPlus => 512,
    }
}

/// The Setup, (optional) Data and Status Stage TRBs of a control transfer whose data stage
/// uses the buffer at `buf` (ignored when `setup.length == 0`). Data IN stages have
/// Interrupt-on-Short-Packet so a short read reports its length; the Status Stage (direction
/// opposite to the data, IN when there is none) has IOC.
pub fn control_trbs(
    setup: &SetupPacket,
    buf: u64,
) -> (
    transfer::SetupStage,
    Option<transfer::DataStage>,
    transfer::StatusStage,
) {
    let dir_in = setup.is_device_to_host();
    let len = setup.length;
    let mut s = transfer::SetupStage::new();
    s.set_request_type(setup.request_type)
        .set_request(setup.request)
        .set_value(setup.value)
        .set_index(setup.index)
        .set_length(len)
        .set_transfer_type(match (len, dir_in) {
            (0, _) => transfer::TransferType::No,
            (_, true) => transfer::TransferType::In,
            (_, false) => transfer::TransferType::Out,
        });
    let data = (len > 0).then(|| {
        let mut d = transfer::DataStage::new();
        d.set_data_buffer_pointer(buf)
            .set_trb_transfer_length(u32::from(len))
            .set_td_size(0)
            .set_direction(if dir_in {
                transfer::Direction::In
            } else {
                transfer::Direction::Out
            });
        if dir_in {
            d.set_interrupt_on_short_packet();
        }
        d
    });
    let mut st = transfer::StatusStage::new();
    if len == 0 || !dir_in {
        st.set_direction();
    }
    st.set_interrupt_on_completion();
    (s, data, st)
}

impl<M: Mmio, R: RawLock> Controller<M, R> {
    /// Takes the controller from the BIOS, resets it and starts it with interrupter 0 enabled.
    ///
    /// # Safety
    /// `mmio_base` is the physical address of the controller's BAR0 and nothing else drives it.
    // The only unsafe code of the driver: the register accessors' constructors, each with its
    // SAFETY line.
    #[allow(unsafe_code)]
    pub unsafe fn new(
        mmio_base: usize,
        mapper: M,
        dma: Box<dyn DmaMemory + Send + Sync>,
        os: Arc<dyn Os>,
    ) -> Result<Self, XhciError> {
        // SAFETY: the caller guarantees `mmio_base` is this controller's BAR0 and that only
        // this driver accesses it.
        let mut regs = unsafe { Registers::new(mmio_base, mapper.clone()) };
        let cap = &regs.capability;
        let caplength = usize::from(cap.caplength.read_volatile().get());
        let dboff = cap.dboff.read_volatile().get() as usize;
        let hcs1 = cap.hcsparams1.read_volatile();
        let hcs2 = cap.hcsparams2.read_volatile();
        let hcc1 = cap.hccparams1.read_volatile();
        // HCIVERSION is the upper half of the capability block's first dword. Read it as a
        // dword, as Linux does: the `xhci` crate's 16-bit read at offset 2 returns 0 on
        // controllers (QEMU's among them) that implement only aligned dword access here.
        // SAFETY: offset 0 of BAR0 is the CAPLENGTH/HCIVERSION dword, mapped like the rest.
        let version =
            (unsafe { xhci::accessor::single::ReadOnly::<u32, M>::new(mmio_base, mapper.clone()) }
                .read_volatile()
                >> 16) as u16;
        let max_slots = hcs1.number_of_device_slots();
        let max_ports = hcs1.number_of_ports();
        let max_interrupters = hcs1.number_of_interrupts();
        if max_slots == 0 || max_ports == 0 || max_interrupters == 0 {
            return Err(XhciError::Unsupported("no slots, ports or interrupters"));
        }
        // SAFETY: the Doorbell Array lies at BAR0 + DBOFF with one dword per slot plus the
        // command doorbell (xHCI 5.6); only this driver writes it (the crate's own doorbell
        // accessor in `regs` is never used).
        let doorbells = unsafe {
            array::ReadWrite::new(
                mmio_base + dboff,
                usize::from(max_slots) + 1,
                mapper.clone(),
            )
        };
        // SAFETY: the Port Register Sets lie at the operational base + 0x400, 16 bytes per
        // port (xHCI 5.4.8); PORTSC is written only through this accessor, the crate's is only
        // read.
        let ports_raw = unsafe {
            array::ReadWrite::new(
                mmio_base + caplength + 0x400,
                usize::from(max_ports) * 4,
                mapper.clone(),
            )
        };

        // Extended capabilities: BIOS handoff, then the port protocols.
        let mut bios_handoff = None;
        let mut protocols = Vec::new();
        // SAFETY: the list lies inside this controller's BAR0 (xECP from HCCPARAMS1); the
        // capabilities it yields are only used here, during bring-up.
        let list = unsafe { extended_capabilities::List::new(mmio_base, hcc1, mapper.clone()) };
        if let Some(mut list) = list {
            for cap in &mut list {
                match cap {
                    Ok(ExtendedCapability::UsbLegacySupport(mut leg)) => {
                        bios_handoff = Some(port::bios_handoff(&mut leg.usblegsup, &*os));
                    }
                    Ok(ExtendedCapability::XhciSupportedProtocol(sp)) => {
                        protocols.push(PortProtocol::read(&sp));
                    }
                    _ => {}
                }
            }
        }
        if bios_handoff.is_some() {
            // Disable the BIOS's SMIs and clear pending SMI events in USBLEGCTLSTS (xHCI 7.1.2),
            // as Linux does. Raw: the crate's accessor for this register points at USBLEGSUP.
            let mut at = mmio_base + (usize::from(hcc1.xhci_extended_capabilities_pointer()) << 2);
            for _ in 0..64 {
                // SAFETY: `at` walks the extended capability list inside BAR0 (each header's
                // Next field, xHCI 7.0); only read here.
                let hdr: u32 =
                    unsafe { xhci::accessor::single::ReadWrite::<u32, M>::new(at, mapper.clone()) }
                        .read_volatile();
                if hdr & 0xff == 1 {
                    // SAFETY: USBLEGCTLSTS is the dword after USBLEGSUP; only written here.
                    let mut ctl = unsafe {
                        xhci::accessor::single::ReadWrite::<u32, M>::new(at + 4, mapper.clone())
                    };
                    let v = ctl.read_volatile();
                    ctl.write_volatile(
                        (v & port::LEGACY_CTLSTS_KEEP) | port::LEGACY_CTLSTS_SMI_EVENTS,
                    );
                    break;
                }
                let next = ((hdr >> 8) & 0xff) as usize;
                if next == 0 {
                    break;
                }
                at += next << 2;
            }
        }
        if protocols.is_empty() {
            // No Supported Protocol capability (pre-1.0 parts): call every port USB 2.
            protocols.push(PortProtocol::fallback(max_ports));
        }

        let os2 = os.clone();
        let wait = |what: &'static str,
                    timeout: u64,
                    regs: &mut Registers<M>,
                    cond: &dyn Fn(&mut Registers<M>) -> bool|
         -> Result<(), XhciError> {
            let deadline = os2.now_us() + timeout;
            loop {
                if cond(regs) {
                    return Ok(());
                }
                if os2.now_us() >= deadline {
                    return Err(XhciError::Timeout(what));
                }
                os2.delay_us(POLL_US);
            }
        };

        // Halt.
        if !regs.operational.usbsts.read_volatile().hc_halted() {
            regs.operational.usbcmd.update_volatile(|c| {
                c.clear_run_stop();
            });
            wait("HCHalted", HALT_TIMEOUT_US, &mut regs, &|r| {
                r.operational.usbsts.read_volatile().hc_halted()
            })?;
        }
        // Reset. No operational register may be written while CNR is set.
        wait("Controller Not Ready", RESET_TIMEOUT_US, &mut regs, &|r| {
            !r.operational.usbsts.read_volatile().controller_not_ready()
        })?;
        regs.operational.usbcmd.update_volatile(|c| {
            c.set_host_controller_reset();
        });
        // Some Intel parts hang when registers are read right after HCRST (Linux quirk).
        os.delay_us(1000);
        wait("HCRST to clear", RESET_TIMEOUT_US, &mut regs, &|r| {
            !r.operational.usbcmd.read_volatile().host_controller_reset()
        })?;
        wait(
            "Controller Not Ready after reset",
            RESET_TIMEOUT_US,
            &mut regs,
            &|r| !r.operational.usbsts.read_volatile().controller_not_ready(),
        )?;

        let ac64 = hcc1.addressing_capability();
        let context_size = ContextSize::from_csz(hcc1.context_size());
        let ps = regs.operational.pagesize.read_volatile().get();
        if ps == 0 {
            return Err(XhciError::Unsupported("PAGESIZE reads 0"));
        }
        let page_size = 1usize << (ps.trailing_zeros() + 12);
        let slots_enabled = max_slots.min(MAX_SLOTS_ENABLED);
        regs.operational.config.update_volatile(|c| {
            c.set_max_device_slots_enabled(slots_enabled);
        });

        // DCBAA: (MaxSlotsEn + 1) pointers, 64-byte aligned, not crossing a page.
        let dcbaa = dma.alloc(
            (usize::from(slots_enabled) + 1) * 8,
            64,
            page_size.min(4096),
        )?;
        dcbaa.fill_zero();
        check_dma(ac64, &dcbaa)?;

        // Scratchpads (xHCI 4.20): an array of page-size buffers, pointed at by DCBAA[0].
        let scratchpads = hcs2.max_scratchpad_buffers();
        let mut sp_bufs = Vec::new();
        let sp_array = if scratchpads > 0 {
            let arr = dma.alloc(scratchpads as usize * 8, 64, page_size)?;
            arr.fill_zero();
            check_dma(ac64, &arr)?;
            for i in 0..scratchpads as usize {
                let b = dma.alloc(page_size, page_size, page_size)?;
                b.fill_zero();
                check_dma(ac64, &b)?;
                write_u64(&arr, i * 2, b.phys());
                sp_bufs.push(b);
            }
            write_u64(&dcbaa, 0, arr.phys());
            Some(arr)
        } else {
            None
        };
        regs.operational
            .dcbaap
            .update_volatile(|d| d.set(dcbaa.phys()));

        // Command ring.
        let cmd_ring = CommandRing::new(&*dma)?;
        let crcr = cmd_ring.crcr();
        regs.operational.crcr.update_volatile(|c| {
            c.set_command_ring_pointer(crcr & !0x3f);
            if crcr & 1 != 0 {
                c.set_ring_cycle_state();
            } else {
                c.clear_ring_cycle_state();
            }
        });

        // Event ring on interrupter 0: ERSTSZ, ERDP, then ERSTBA (writing ERSTBA starts the
        // controller's use of the table, xHCI 4.9.4).
        let events = EventRing::new(&*dma)?;
        {
            let mut ir = regs.interrupter_register_set.interrupter_mut(0);
            ir.erstsz
                .update_volatile(|r| r.set(events.erst_size() as u16));
            let erdp = events.erdp();
            ir.erdp.update_volatile(|r| erdp.apply(r));
            ir.erstba.update_volatile(|r| r.set(events.erst_phys()));
            ir.imod.update_volatile(|r| {
                r.set_interrupt_moderation_interval(IMOD_INTERVAL);
            });
            ir.iman.update_volatile(|r| {
                r.clear_interrupt_pending().set_interrupt_enable();
            });
        }

        // Run.
        regs.operational.usbcmd.update_volatile(|c| {
            c.set_interrupter_enable()
                .set_host_system_error_enable()
                .set_run_stop();
        });
        wait("HCHalted to clear", HALT_TIMEOUT_US, &mut regs, &|r| {
            !r.operational.usbsts.read_volatile().hc_halted()
        })?;

        let info = ControllerInfo {
            version,
            max_slots,
            slots_enabled,
            max_ports,
            max_interrupters,
            context_size,
            ac64,
            scratchpads,
            page_size,
            bios_handoff,
            protocols,
        };
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            hw: Mutex::new(Hw {
                regs,
                doorbells,
                ports_raw,
            }),
            dma,
            os,
            info,
            dcbaa,
            _scratchpad_array: sp_array,
            _scratchpads: sp_bufs,
            cmd: Mutex::new(CmdState {
                ring: cmd_ring,
                pending: BTreeMap::new(),
            }),
            events: Mutex::new(events),
            devices: Mutex::new((0..=slots_enabled).map(|_| None).collect()),
            zombies: Mutex::new(Vec::new()),
            port_changed: Mutex::new(vec![false; usize::from(max_ports) + 1]),
            command_timeout_us: AtomicU64::new(COMMAND_TIMEOUT_US),
            dead: AtomicBool::new(false),
            event_waiting: AtomicBool::new(false),
            aborting: AtomicBool::new(false),
            counters: Mutex::new(Counters::default()),
        });
        let c = Self { inner };
        c.power_ports();
        c.process_events();
        Ok(c)
    }

    /// Ports with Port Power Control come up unpowered after reset: power them and wait the
    /// 20 ms power-on-to-power-good time.
    fn power_ports(&self) {
        let mut any = false;
        for p in 1..=self.inner.info.max_ports {
            let sc = self.portsc_raw(p);
            if sc & port::PP == 0 {
                self.inner.write_portsc(p, port::neutral(sc) | port::PP);
                any = true;
            }
        }
        if any {
            self.inner.os.delay_us(20_000);
        }
    }

    /// What bring-up found.
    pub fn info(&self) -> ControllerInfo {
        self.inner.info.clone()
    }

    /// Counters since bring-up.
    pub fn counters(&self) -> Counters {
        *self.inner.counters.lock()
    }

    /// The controller stopped answering (command abort failed or Host System Error).
    pub fn is_dead(&self) -> bool {
        self.inner.dead.load(Ordering::Acquire)
    }

    /// Sets how long a command may take before it is aborted.
    pub fn set_command_timeout_us(&self, us: u64) {
        self.inner.command_timeout_us.store(us, Ordering::Release);
    }

    /// Devices (slots) currently allocated.
    pub fn device_count(&self) -> usize {
        self.inner
            .devices
            .lock()
            .iter()
            .filter(|d| d.is_some())
            .count()
    }

    /// Takes the Port Status Change Events seen since the last call (port numbers).
    pub fn take_port_changes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, c) in self.inner.port_changed.lock().iter_mut().enumerate() {
            if core::mem::take(c) {
                out.push(i as u8);
            }
        }
        out
    }

    /// Drains the event ring (acknowledging IMAN.IP / USBSTS.EINT, writing ERDP with EHB),
    /// completing commands and transfers (their waiters are signalled) and recording port
    /// status changes. Returns the number of events consumed. Any thread may call it.
    pub fn process_events(&self) -> usize {
        self.inner.process_events()
    }

    /// The controller thread's loop body: waits for the interrupt (at most `timeout_us`), then
    /// [`Self::process_events`]. While a thread is parked here, waiters sleep on their
    /// completions instead of draining the ring themselves (use this rather than
    /// `Os::wait_for_interrupt` + `process_events`, which the driver cannot see).
    pub fn wait_for_events(&self, timeout_us: u64) -> usize {
        // Events that came before we park (the interrupt may have been taken by a waiter).
        self.inner.process_events();
        self.inner.event_waiting.store(true, Ordering::Release);
        self.inner.os.wait_for_interrupt(timeout_us);
        self.inner.event_waiting.store(false, Ordering::Release);
        self.inner.process_events()
    }

    /// Runs one command: enqueue (under the command lock), doorbell 0, wait for its Command
    /// Completion Event. A command that does not complete within the command timeout is aborted
    /// (CRCR.CA) and reported as [`TransferError::Timeout`].
    pub fn command(&self, trb: impl Into<command::Allowed>) -> Result<CommandDone, TransferError> {
        self.inner.command(trb.into())
    }

    /// Reads PORTSC of `port` (1-based) as a raw value.
    pub fn portsc_raw(&self, port: u8) -> u32 {
        self.inner.portsc_raw(port)
    }

    /// Speed, attachment and current EP0 max packet size of a device.
    pub fn device_info(&self, device: DeviceHandle) -> Option<(Speed, Attachment, u16)> {
        let d = self.inner.device(device).ok()?;
        Some((d.speed, d.at, d.ep0_max_packet.load(Ordering::Acquire)))
    }

    /// Slots whose Disable Slot failed and whose memory is therefore still held.
    pub fn zombie_count(&self) -> usize {
        self.inner.zombies.lock().len()
    }

    /// No Op command (a liveness check of the command ring).
    pub fn noop(&self) -> Result<(), TransferError> {
        self.command(command::Noop::new()).map(|_| ())
    }

    /// Port status (see [`HostController::port_status`]).
    pub fn port_status(&self, port: u8) -> PortStatus {
        let usb_major = self.inner.protocol_of(port).map_or(2, |p| p.major);
        if port == 0 || port > self.inner.info.max_ports {
            return PortStatus {
                connected: false,
                enabled: false,
                speed: None,
                usb_major,
                connect_changed: false,
            };
        }
        let sc = self
            .inner
            .hw
            .lock()
            .regs
            .port_register_set
            .read_volatile_at(usize::from(port) - 1)
            .portsc;
        let enabled = sc.port_enabled_disabled();
        PortStatus {
            connected: sc.current_connect_status(),
            enabled,
            speed: if enabled {
                self.inner.port_speed(port, sc.port_speed())
            } else {
                None
            },
            usb_major,
            connect_changed: sc.connect_status_change(),
        }
    }

    /// Clears the port's change bits.
    pub fn acknowledge_port_change(&self, port: u8) {
        if self.inner.check_port(port).is_err() {
            return;
        }
        let sc = self.portsc_raw(port);
        self.inner
            .write_portsc(port, port::neutral(sc) | (sc & port::CHANGE_BITS));
        if let Some(c) = self.inner.port_changed.lock().get_mut(usize::from(port)) {
            *c = false;
        }
    }

    /// Resets the port (USB 2: Port Reset; USB 3: waits for link training, Warm Port Reset if
    /// it does not come) and returns the device's speed.
    pub fn reset_port(&self, port: u8) -> Result<Speed, TransferError> {
        let inner = &*self.inner;
        inner.check_port(port)?;
        let major = inner.protocol_of(port).map_or(2, |p| p.major);
        let sc = inner.portsc_raw(port);
        if sc & port::CCS == 0 {
            return Err(TransferError::Disconnected);
        }
        if major >= 3 {
            // USB 3 ports enable themselves after link training; a link stuck in Inactive or
            // Compliance (or never reaching U0) needs a Warm Port Reset.
            let ok = inner.wait_port(port, USB3_ENABLE_TIMEOUT_US, |sc| sc & port::PED != 0);
            if !ok {
                let sc = inner.portsc_raw(port);
                inner.write_portsc(port, port::neutral(sc) | port::WPR);
                let done = inner.wait_port(port, PORT_RESET_TIMEOUT_US, |sc| {
                    sc & (port::WRC | port::PRC) != 0
                });
                let sc = inner.portsc_raw(port);
                inner.write_portsc(port, port::neutral(sc) | (sc & (port::WRC | port::PRC)));
                if !done {
                    return Err(TransferError::Timeout);
                }
                if !inner.wait_port(port, USB3_ENABLE_TIMEOUT_US, |sc| sc & port::PED != 0) {
                    return Err(TransferError::Controller(format!(
                        "USB 3 port {port} not enabled after warm reset"
                    )));
                }
            }
        } else {
            inner.write_portsc(port, port::neutral(sc) | port::PR);
            let done = inner.wait_port(port, PORT_RESET_TIMEOUT_US, |sc| {
                sc & port::PRC != 0 || sc & port::CCS == 0
            });
            let sc = inner.portsc_raw(port);
            inner.write_portsc(port, port::neutral(sc) | (sc & port::PRC));
            if sc & port::CCS == 0 {
                return Err(TransferError::Disconnected);
            }
            if !done {
                return Err(TransferError::Timeout);
            }
            if sc & port::PED == 0 {
                return Err(TransferError::Controller(format!(
                    "port {port} not enabled after reset"
                )));
            }
            inner.os.delay_us(RESET_RECOVERY_US);
        }
        let psiv = port::speed_field(inner.portsc_raw(port));
        inner.port_speed(port, psiv).ok_or_else(|| {
            TransferError::Controller(format!("port {port}: unknown speed ID {psiv}"))
        })
    }

    /// Enable Slot + Address Device for the device at the default address at `at`.
    pub fn address_device(&self, at: Attachment) -> Result<DeviceHandle, TransferError> {
        let inner = &*self.inner;
        inner.check_port(at.root_port)?;
        let slot_type = inner.protocol_of(at.root_port).map_or(0, |p| p.slot_type);
        let mut es = command::EnableSlot::new();
        es.set_slot_type(slot_type);
        let slot = inner.command(es.into())?.slot;
        if slot == 0 || slot > inner.info.slots_enabled {
            return Err(TransferError::Controller(format!(
                "Enable Slot returned slot {slot}"
            )));
        }
        match inner.setup_slot(slot, at) {
            Ok(()) => Ok(slot),
            Err(e) => {
                if inner.device(slot).is_ok() {
                    let _ = inner.release(slot);
                } else {
                    // Enable Slot succeeded but setup did not get as far as a device.
                    let mut c = command::DisableSlot::new();
                    c.set_slot_id(slot);
                    let _ = inner.command(c.into());
                }
                Err(e)
            }
        }
    }

    /// Evaluate Context with EP0's real max packet size.
    pub fn set_ep0_max_packet(
        &self,
        device: DeviceHandle,
        max_packet: u16,
    ) -> Result<(), TransferError> {
        let inner = &*self.inner;
        let size = inner.info.context_size;
        let input = InputContext::evaluate_ep0_max_packet(size, max_packet);
        let region = input
            .to_dma(&*inner.dma)
            .map_err(|_| TransferError::NoResources("DMA memory"))?;
        let dev = inner.device(device)?;
        let mut c = command::EvaluateContext::new();
        c.set_slot_id(device)
            .set_input_context_pointer(region.phys());
        inner.command(c.into())?;
        dev.ep0_max_packet.store(max_packet, Ordering::Release);
        Ok(())
    }

    /// A control transfer on EP0 (see [`HostController::control_transfer`]). Concurrent
    /// callers on one device take turns (sleeping, no lock held); a STALL is a protocol stall
    /// and EP0 is recovered before returning.
    pub fn control_transfer(
        &self,
        device: DeviceHandle,
        setup: SetupPacket,
        data: &mut [u8],
        timeout_ms: u32,
    ) -> Result<usize, TransferError> {
        let r = self.inner.control(device, setup, data, timeout_ms);
        if let Err(e) = &r {
            self.inner.count_error(e);
        }
        r
    }

    /// Frees everything the controller holds for the device (Disable Slot). Pending transfers
    /// on its pipes complete with `Disconnected`.
    pub fn release_device(&self, device: DeviceHandle) -> Result<(), TransferError> {
        self.inner.release(device)
    }

    /// The device was unplugged (or its driver gave up on it): every pending transfer on every
    /// pipe completes with `Disconnected`, the pipes refuse new submissions, Disable Slot frees
    /// the slot; rings, contexts and buffers are freed once no handle uses them.
    /// A slot without a device means the device was released (unplugged): callers holding its
    /// handle get `Disconnected` from then on.
    pub fn device_gone(&self, device: DeviceHandle) -> Result<(), TransferError> {
        self.inner.release(device)
    }

    /// Configure Endpoint for `endpoints` (bulk and interrupt) of `device` and returns their
    /// pipes in the same order. The caller then sends SET_CONFIGURATION / SET_INTERFACE on EP0.
    pub fn configure_endpoints(
        &self,
        device: DeviceHandle,
        endpoints: &[EndpointConfig],
    ) -> Result<Vec<Pipe>, TransferError> {
        self.inner.configure_endpoints(device, endpoints)
    }

    /// Every pipe (EP0 included, address 0) of every device with its counters.
    pub fn pipes(&self) -> Vec<PipeInfo> {
        let devices: Vec<_> = self
            .inner
            .devices
            .lock()
            .iter()
            .flatten()
            .cloned()
            .collect();
        devices
            .iter()
            .flat_map(|d| d.all_endpoints())
            .map(|e| e.info())
            .collect()
    }
}

impl<M: Mmio, R: RawLock> Inner<M, R> {
    fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.counters.lock());
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    fn ring_doorbell(&self, index: u8, target: u8) {
        let mut d = doorbell::Register::default();
        d.set_doorbell_target(target);
        self.hw
            .lock()
            .doorbells
            .write_volatile_at(usize::from(index), d);
    }

    fn process_events(&self) -> usize {
        let mut events = self.events.lock();
        let mut hse = false;
        {
            let mut hw = self.hw.lock();
            hw.regs
                .interrupter_register_set
                .interrupter_mut(0)
                .iman
                .update_volatile(|r| {
                    r.clear_interrupt_pending();
                });
            hw.regs.operational.usbsts.update_volatile(|s| {
                hse = s.host_system_error();
                s.set_0_host_system_error()
                    .set_0_port_change_detect()
                    .set_0_save_restore_error()
                    .clear_event_interrupt();
            });
        }
        if hse {
            self.count(|c| c.host_system_errors += 1);
            self.dead.store(true, Ordering::Release);
        }
        let mut n = 0;
        while let Some(ev) = events.next_event() {
            n += 1;
            self.dispatch(ev);
        }
        let erdp = events.erdp();
        self.hw
            .lock()
            .regs
            .interrupter_register_set
            .interrupter_mut(0)
            .erdp
            .update_volatile(|r| erdp.apply(r));
        drop(events);
        self.count(|c| c.events += n as u64);
        n
    }

    fn dispatch(&self, ev: Event) {
        match ev {
            Event::CommandCompletion {
                trb_ptr,
                code,
                slot,
                parameter,
            } => {
                if code == Ok(CompletionCode::CommandRingStopped) {
                    // Points at the next, unexecuted command: nothing completed.
                    return;
                }
                let waiter = {
                    let mut c = self.cmd.lock();
                    let _ = c.ring.complete_up_to(trb_ptr);
                    c.pending.remove(&trb_ptr)
                };
                if let Some(w) = waiter {
                    w.result
                        .call_once(|| check(code).map(|_| CommandDone { slot, parameter }));
                    w.completion.signal();
                }
            }
            Event::Transfer {
                trb_ptr,
                code,
                residual_len,
                endpoint_id,
                slot,
                ..
            } => {
                let ep = self.device(slot).ok().and_then(|d| {
                    d.endpoints
                        .lock()
                        .get(usize::from(endpoint_id))
                        .cloned()
                        .flatten()
                });
                match ep {
                    Some(ep) => ep.on_event(trb_ptr, code, residual_len),
                    None => self.count(|c| c.stray_events += 1),
                }
            }
            Event::PortStatusChange { port } => {
                self.count(|c| c.port_events += 1);
                if let Some(c) = self.port_changed.lock().get_mut(usize::from(port)) {
                    *c = true;
                }
            }
            Event::Other(_) => {}
        }
    }

    fn wait_until(&self, done: &dyn Fn() -> bool, completion: &dyn Completion, deadline: u64) {
        loop {
            if done() {
                return;
            }
            let now = self.os.now_us();
            if now >= deadline {
                return;
            }
            let slice = (deadline - now).min(MAX_IRQ_WAIT_US);
            if self.event_waiting.load(Ordering::Acquire) {
                if !completion.wait(slice) {
                    // No signal in a whole slice: the event thread may be stuck or an
                    // interrupt lost; drain the ring ourselves.
                    self.process_events();
                }
            } else {
                self.process_events();
                if done() {
                    return;
                }
                self.os.wait_for_interrupt(slice);
            }
        }
    }

    fn command(&self, trb: command::Allowed) -> Result<CommandDone, TransferError> {
        if self.is_dead() {
            return Err(TransferError::Controller("controller is dead".into()));
        }
        let w = Arc::new(CmdWaiter {
            result: spin::Once::new(),
            completion: self.os.completion(),
        });
        let ptr = {
            let mut c = self.cmd.lock();
            let ptr = c
                .ring
                .enqueue(trb)
                .map_err(|_| TransferError::NoResources("command ring"))?;
            c.pending.insert(ptr, w.clone());
            ptr
        };
        self.count(|c| c.commands += 1);
        self.ring_doorbell(0, 0);
        let deadline = self.os.now_us() + self.command_timeout_us.load(Ordering::Acquire);
        let w2 = w.clone();
        self.wait_until(&move || w2.result.is_completed(), &*w.completion, deadline);
        if w.result.get().is_none() {
            self.abort_command(ptr);
        }
        match w.result.get() {
            Some(Ok(d)) => Ok(*d),
            Some(Err(UsbError::CommandAborted)) | None => {
                self.count(|c| c.command_timeouts += 1);
                Err(TransferError::Timeout)
            }
            Some(Err(e)) => {
                self.count(|c| c.command_errors += 1);
                Err((*e).into())
            }
        }
    }

    /// Enqueues a command without waiting (its completion is dropped).
    fn command_nowait(&self, trb: command::Allowed) {
        if self.is_dead() {
            return;
        }
        let ok = self.cmd.lock().ring.enqueue(trb).is_ok();
        if ok {
            self.count(|c| c.commands += 1);
            self.ring_doorbell(0, 0);
        }
    }

    /// Command Abort (xHCI 4.6.1.2): set CRCR.CA, wait for CRR to clear; the aborted command
    /// completes with Command Aborted and the ring stops; the doorbell restarts it after the
    /// aborted TRB. If the ring does not stop, the controller is dead.
    fn abort_command(&self, ptr: u64) {
        while self
            .aborting
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            self.os.delay_us(POLL_US);
        }
        let still_pending = self.cmd.lock().pending.contains_key(&ptr);
        if still_pending {
            self.hw.lock().regs.operational.crcr.update_volatile(|c| {
                c.set_command_abort();
            });
            let deadline = self.os.now_us() + ABORT_TIMEOUT_US;
            loop {
                self.process_events();
                let running = self
                    .hw
                    .lock()
                    .regs
                    .operational
                    .crcr
                    .read_volatile()
                    .command_ring_running();
                if !running {
                    break;
                }
                if self.os.now_us() >= deadline {
                    self.dead.store(true, Ordering::Release);
                    break;
                }
                self.os.delay_us(POLL_US);
            }
            self.process_events();
        }
        let restart = {
            let mut c = self.cmd.lock();
            if c.pending.remove(&ptr).is_some() {
                // The aborted command never reported: forget it so the ring slot is not held
                // forever (the controller skipped it).
                let _ = c.ring.complete_up_to(ptr);
            }
            !c.pending.is_empty()
        };
        if restart && !self.is_dead() {
            self.ring_doorbell(0, 0);
        }
        self.aborting.store(false, Ordering::Release);
    }

    fn portsc_raw(&self, port: u8) -> u32 {
        self.hw
            .lock()
            .ports_raw
            .read_volatile_at((usize::from(port) - 1) * 4)
    }

    fn write_portsc(&self, port: u8, value: u32) {
        self.hw
            .lock()
            .ports_raw
            .write_volatile_at((usize::from(port) - 1) * 4, value);
    }

    fn protocol_of(&self, port: u8) -> Option<&PortProtocol> {
        self.info.protocols.iter().find(|p| p.contains(port))
    }

    fn port_speed(&self, port: u8, psiv: u8) -> Option<Speed> {
        match self.protocol_of(port) {
            Some(p) => p.speed(psiv),
            None => Speed::from_xhci_default_psiv(psiv),
        }
    }

    fn wait_port(&self, port: u8, timeout_us: u64, cond: impl Fn(u32) -> bool) -> bool {
        // Sleep first: nothing a port does after a write is instantaneous.
        let deadline = self.os.now_us() + timeout_us;
        loop {
            self.os.delay_us(POLL_US);
            if cond(self.portsc_raw(port)) {
                return true;
            }
            if self.os.now_us() >= deadline {
                return false;
            }
        }
    }

    fn check_port(&self, port: u8) -> Result<(), TransferError> {
        if port == 0 || port > self.info.max_ports {
            return Err(TransferError::Controller(format!("no root port {port}")));
        }
        Ok(())
    }

    fn device(&self, slot: DeviceHandle) -> Result<Arc<Device<R>>, TransferError> {
        self.devices
            .lock()
            .get(usize::from(slot))
            .cloned()
            .flatten()
            .ok_or(TransferError::Disconnected)
    }

    /// Endpoint state (xHCI Table 6-8) from the output Device Context.
    fn ep_state(&self, slot: u8, dci: u8) -> u32 {
        let words = self.info.context_size.bytes() / 4;
        match self.device(slot) {
            Ok(d) => d.output.read(usize::from(dci) * words) & 7,
            Err(_) => 0,
        }
    }

    fn count_error(&self, e: &TransferError) {
        self.count(|c| match e {
            TransferError::Stall => c.stalls += 1,
            TransferError::Babble => c.babble += 1,
            TransferError::Transaction => c.transaction_errors += 1,
            TransferError::Timeout => c.timeouts += 1,
            _ => c.other_errors += 1,
        });
    }

    fn host_ops(&self) -> Weak<dyn HostOps> {
        self.me.clone()
    }

    fn control(
        &self,
        slot: DeviceHandle,
        setup: SetupPacket,
        data: &mut [u8],
        timeout_ms: u32,
    ) -> Result<usize, TransferError> {
        if self.is_dead() {
            return Err(TransferError::Controller("controller is dead".into()));
        }
        let len = usize::from(setup.length);
        if data.len() < len {
            return Err(TransferError::Controller(format!(
                "buffer of {} bytes for wLength {len}",
                data.len()
            )));
        }
        if len > EP0_BUFFER_BYTES {
            return Err(TransferError::NoResources(
                "control transfer longer than the 4 KiB EP0 buffer",
            ));
        }
        let dev = self.device(slot)?;
        let timeout_us = u64::from(timeout_ms.max(1)) * 1000;
        // EP0 runs one control transfer at a time: later callers sleep until it is free.
        let busy_deadline = self.os.now_us() + timeout_us;
        while dev
            .ep0_busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            if self.os.now_us() >= busy_deadline {
                return Err(TransferError::Timeout);
            }
            self.os.delay_us(POLL_US);
        }
        let r = self.control_on(&dev, setup, data, timeout_us);
        dev.ep0_busy.store(false, Ordering::Release);
        r
    }

    fn control_on(
        &self,
        dev: &Device<R>,
        setup: SetupPacket,
        data: &mut [u8],
        timeout_us: u64,
    ) -> Result<usize, TransferError> {
        let len = usize::from(setup.length);
        let dir_in = setup.is_device_to_host();
        if !dir_in && len > 0 {
            copy_to_dma(&dev.ep0_buf, &data[..len]);
        }
        let (s, d, st) = control_trbs(&setup, dev.ep0_buf.phys());
        let mut trbs: Vec<transfer::Allowed> = vec![s.into()];
        let mut lens = vec![0u32];
        let mut data_index = None;
        if let Some(d) = d {
            data_index = Some(trbs.len());
            trbs.push(d.into());
            lens.push(len as u32);
        }
        trbs.push(st.into());
        lens.push(0);
        self.count(|c| c.transfers += 1);
        let xfer = match dev.ep0.enqueue(&trbs, &lens, None, data_index) {
            Err(TransferError::PipeHalted) => {
                // An earlier failure whose recovery failed: try again now.
                dev.ep0.clear_halt(false)?;
                dev.ep0.enqueue(&trbs, &lens, None, data_index)?
            }
            r => r?,
        };
        let deadline = self.os.now_us() + timeout_us;
        let x = xfer.clone();
        self.wait_until(&move || x.is_done(), xfer.completion(), deadline);
        let r = match xfer.result() {
            Some(r) => r,
            None => dev.ep0.cancel(&xfer),
        };
        match r {
            Ok(n) => {
                let n = n.min(len);
                if dir_in && n > 0 {
                    copy_from_dma(&dev.ep0_buf, &mut data[..n]);
                }
                Ok(n)
            }
            Err(e) => {
                if dev.ep0.is_halted() && e != TransferError::Disconnected {
                    // Protocol stall (or timeout): the framework recovers EP0 itself.
                    dev.ep0.clear_halt(false)?;
                }
                Err(e)
            }
        }
    }

    fn setup_slot(&self, slot: u8, at: Attachment) -> Result<(), TransferError> {
        let nomem = |_| TransferError::NoResources("DMA memory");
        let size = self.info.context_size;
        let output = self
            .dma
            .alloc(size.device_context_bytes(), 64, 4096)
            .map_err(nomem)?;
        output.fill_zero();
        let ep0_ring = TransferRing::new(&*self.dma).map_err(nomem)?;
        let ep0_buf = self
            .dma
            .alloc(EP0_BUFFER_BYTES, 4096, 4096)
            .map_err(nomem)?;
        for r in [&output, &ep0_buf] {
            check_dma(self.info.ac64, r)
                .map_err(|_| TransferError::NoResources("DMA memory below 4 GiB"))?;
        }
        let max_packet = initial_ep0_max_packet(at.speed);
        let params = slot_params(at);
        let input = InputContext::address_device(
            size,
            &params,
            max_packet,
            ep0_ring.dequeue_pointer_for_reset(),
        );
        let region = input.to_dma(&*self.dma).map_err(nomem)?;
        let ep0 = Endpoint::new(
            self.host_ops(),
            slot,
            0,
            PipeKind::Control,
            max_packet,
            ep0_ring,
        );
        let mut endpoints = vec![None; 32];
        endpoints[1] = Some(ep0.clone());
        write_u64(&self.dcbaa, usize::from(slot) * 2, output.phys());
        self.devices.lock()[usize::from(slot)] = Some(Arc::new(Device {
            output,
            ep0,
            ep0_buf,
            ep0_busy: AtomicBool::new(false),
            ep0_max_packet: AtomicU16::new(max_packet),
            speed: at.speed,
            at,
            endpoints: Mutex::new(endpoints),
        }));
        let mut c = command::AddressDevice::new();
        c.set_slot_id(slot).set_input_context_pointer(region.phys());
        self.command(c.into())?;
        Ok(())
    }

    /// Disable Slot and free the device: pending transfers complete with `Disconnected` first
    /// (their buffers stay referenced until the controller has let go of the slot).
    fn release(&self, slot: DeviceHandle) -> Result<(), TransferError> {
        let dev = {
            let mut devices = self.devices.lock();
            devices
                .get_mut(usize::from(slot))
                .and_then(|d| d.take())
                .ok_or(TransferError::Disconnected)?
        };
        let eps = dev.all_endpoints();
        for ep in &eps {
            ep.disconnect(false);
        }
        let mut c = command::DisableSlot::new();
        c.set_slot_id(slot);
        let r = match self.command(c.into()) {
            // Controller errors (Slot Not Enabled...) mean the slot is not in use by the
            // controller either.
            Ok(_) | Err(TransferError::Controller(_)) => Ok(()),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => {
                write_u64(&self.dcbaa, usize::from(slot) * 2, 0);
                for ep in &eps {
                    ep.disconnect(true);
                }
                Ok(())
            }
            Err(e) => {
                // The controller may still own the contexts, rings and buffers: keep them.
                self.zombies.lock().push(dev);
                Err(e)
            }
        }
    }

    fn configure_endpoints(
        &self,
        slot: DeviceHandle,
        configs: &[EndpointConfig],
    ) -> Result<Vec<Pipe>, TransferError> {
        let dev = self.device(slot)?;
        let bad = |what: &str| {
            Err(TransferError::Controller(format!(
                "configure endpoints: {what}"
            )))
        };
        let mut seen = [false; 32];
        {
            let existing = dev.endpoints.lock();
            for c in configs {
                let d = context::dci(c.address);
                if c.address & 0x70 != 0 || c.address & 0x0f == 0 {
                    return bad("bad endpoint address");
                }
                if c.kind == PipeKind::Control {
                    return bad("control endpoints other than EP0 are not supported");
                }
                if seen[d] || existing[d].is_some() {
                    return bad("endpoint configured twice");
                }
                seen[d] = true;
            }
        }
        if configs.is_empty() {
            return Ok(Vec::new());
        }
        let nomem = |_| TransferError::NoResources("DMA memory");
        let speed = ctx_speed(dev.speed);
        let super_speed = matches!(dev.speed, Speed::Super | Speed::SuperPlus);
        let mut eps = Vec::new();
        let mut params = Vec::new();
        for c in configs {
            let ring = TransferRing::new(&*self.dma).map_err(nomem)?;
            let ep = Endpoint::new(
                self.host_ops(),
                slot,
                c.address,
                c.kind,
                c.max_packet & 0x7ff,
                ring,
            );
            params.push(EndpointParams {
                address: c.address,
                kind: match c.kind {
                    PipeKind::Interrupt => EndpointKind::Interrupt {
                        interval: context::interrupt_interval(speed, c.interval),
                    },
                    _ => EndpointKind::Bulk,
                },
                max_packet_size: c.max_packet,
                max_burst: if super_speed { c.max_burst } else { 0 },
                ring: ep.ring_pointer(),
            });
            eps.push(ep);
        }
        let mut input = InputContext::configure_endpoints(
            self.info.context_size,
            &slot_params(dev.at),
            0,
            &params,
        );
        // Context Entries covers every endpoint of the device, not just the new ones.
        let highest = {
            let existing = dev.endpoints.lock();
            (1..32)
                .filter(|d| existing[*d].is_some() || seen[*d])
                .max()
                .unwrap_or(1)
        };
        input
            .handler_mut()
            .device_mut()
            .slot_mut()
            .set_context_entries(highest as u8);
        let region = input.to_dma(&*self.dma).map_err(nomem)?;
        let mut c = command::ConfigureEndpoint::new();
        c.set_slot_id(slot).set_input_context_pointer(region.phys());
        self.command(c.into())?;
        let mut table = dev.endpoints.lock();
        for ep in &eps {
            table[usize::from(ep.dci())] = Some(ep.clone());
        }
        drop(table);
        Ok(eps.into_iter().map(|e| Pipe::new(e)).collect())
    }
}

fn slot_params(at: Attachment) -> SlotParams {
    SlotParams {
        route_string: at.route,
        speed: ctx_speed(at.speed),
        root_port: at.root_port,
        transaction_translator: at.tt.map(|(hub, port)| (hub, port, false)),
        hub_ports: None,
        interrupter: 0,
    }
}

impl<M: Mmio, R: RawLock> HostOps for Inner<M, R> {
    fn now_us(&self) -> u64 {
        self.os.now_us()
    }
    fn delay_us(&self, us: u64) {
        self.os.delay_us(us)
    }
    fn new_completion(&self) -> Arc<dyn Completion> {
        self.os.completion()
    }
    fn dma_memory(&self) -> &dyn DmaMemory {
        &*self.dma
    }
    fn doorbell(&self, slot: u8, target: u8) {
        self.ring_doorbell(slot, target)
    }
    fn run_command(&self, trb: command::Allowed) -> Result<CommandDone, TransferError> {
        self.command(trb)
    }
    fn command_nowait(&self, trb: command::Allowed) {
        Inner::command_nowait(self, trb)
    }
    fn wait_until(&self, done: &dyn Fn() -> bool, completion: &dyn Completion, deadline: u64) {
        Inner::wait_until(self, done, completion, deadline)
    }
    fn drain_events(&self) -> usize {
        self.process_events()
    }
    fn ep_state(&self, slot: u8, dci: u8) -> u32 {
        Inner::ep_state(self, slot, dci)
    }
    fn clear_feature_halt(&self, slot: u8, address: u8) -> Result<(), TransferError> {
        // CLEAR_FEATURE(ENDPOINT_HALT): standard, to an endpoint, wIndex = endpoint address.
        let setup = SetupPacket::new(0x02, 1, 0, u16::from(address), 0);
        let r = self
            .control(slot, setup, &mut [], CLEAR_HALT_TIMEOUT_MS)
            .map(|_| ());
        if let Err(e) = &r {
            self.count_error(e);
        }
        r
    }
    fn count_recovery(&self) {
        self.count(|c| c.recoveries += 1);
    }
}

impl<M: Mmio, R: RawLock> HostController for Controller<M, R> {
    fn port_count(&self) -> u8 {
        self.inner.info.max_ports
    }

    fn port_status(&mut self, port: u8) -> PortStatus {
        Controller::port_status(self, port)
    }

    fn acknowledge_port_change(&mut self, port: u8) {
        Controller::acknowledge_port_change(self, port)
    }

    fn reset_port(&mut self, port: u8) -> Result<Speed, TransferError> {
        Controller::reset_port(self, port)
    }

    fn address_device(&mut self, at: Attachment) -> Result<DeviceHandle, TransferError> {
        Controller::address_device(self, at)
    }

    fn set_ep0_max_packet(
        &mut self,
        device: DeviceHandle,
        max_packet: u16,
    ) -> Result<(), TransferError> {
        Controller::set_ep0_max_packet(self, device, max_packet)
    }

    fn control_transfer(
        &mut self,
        device: DeviceHandle,
        setup: SetupPacket,
        data: &mut [u8],
        timeout_ms: u32,
    ) -> Result<usize, TransferError> {
        Controller::control_transfer(self, device, setup, data, timeout_ms)
    }

    fn release_device(&mut self, device: DeviceHandle) -> Result<(), TransferError> {
        Controller::release_device(self, device)
    }
}
