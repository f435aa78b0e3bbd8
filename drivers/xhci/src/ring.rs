//! Producer rings: [`TransferRing`] and [`CommandRing`].
//!
//! One segment of `N` TRBs (default [`DEFAULT_RING_TRBS`]), 64-byte aligned and not crossing a
//! 64 KiB boundary; slot `N - 1` is a Link TRB back to the start with Toggle Cycle, so `N - 1`
//! TRBs can be outstanding at once. The software dequeue index only moves on completions
//! ([`TransferRing::complete_up_to`]), so a slot is never reused before the controller has
//! reported it done.

use crate::dma::{DmaError, DmaMemory, DmaRegion};
use core::sync::atomic::{fence, Ordering};
use xhci::ring::trb::{command, transfer, Link};

/// Default number of TRB slots per ring segment (including the Link TRB).
pub const DEFAULT_RING_TRBS: usize = 256;
/// Bytes per TRB.
pub const TRB_BYTES: usize = xhci::ring::trb::BYTES;
const TRB_WORDS: usize = TRB_BYTES / 4;
/// A ring segment must not cross a 64 KiB boundary (xHCI 4.11.5.1 / Table 6-1).
pub const SEGMENT_BOUNDARY: usize = 64 * 1024;
/// Ring segments are 64-byte aligned.
pub const SEGMENT_ALIGN: usize = 64;

/// The ring has not enough free slots (or the TD can never fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingFull;

/// A completion named a TRB that is not outstanding on this ring (stale or bogus event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotInFlight {
    /// The pointer the event carried.
    pub trb_phys: u64,
}

/// Physical addresses of the first and last TRB of an enqueued TD (the Transfer Event of a
/// completed TD with IOC on its last TRB points at `last`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Td {
    /// First TRB.
    pub first: u64,
    /// Last TRB.
    pub last: u64,
}

/// Writes a TRB so that the consumer can never see a half-written one: dwords 0-2 first, then
/// a release fence, then dword 3 (which carries the cycle bit that hands the TRB over).
pub(crate) fn publish_trb(mem: &DmaRegion, index: usize, raw: [u32; 4]) {
    let base = index * TRB_WORDS;
    mem.write_words(base, &raw[..3]);
    fence(Ordering::Release);
    mem.write(base + 3, raw[3]);
}

pub(crate) fn read_trb(mem: &DmaRegion, index: usize) -> [u32; 4] {
    let mut raw = [0; 4];
    mem.read_words(index * TRB_WORDS, &mut raw);
    raw
}

/// The type-independent part of a producer ring.
#[derive(Debug)]
struct ProducerRing {
    mem: DmaRegion,
    /// Slots including the Link TRB.
    slots: usize,
    /// Next slot to write (never the Link slot).
    enq: usize,
    /// Producer cycle state.
    pcs: bool,
    /// Oldest slot not yet reported complete.
    deq: usize,
    /// TRBs written and not yet reported complete.
    in_flight: usize,
}

impl ProducerRing {
    fn new(dma: &dyn DmaMemory, slots: usize) -> Result<Self, DmaError> {
        assert!(
            (2..=SEGMENT_BOUNDARY / TRB_BYTES).contains(&slots),
            "ring size must be 2..=4096 TRBs"
        );
        let mem = dma.alloc(slots * TRB_BYTES, SEGMENT_ALIGN, SEGMENT_BOUNDARY)?;
        mem.fill_zero();
        let ring = Self {
            mem,
            slots,
            enq: 0,
            pcs: true,
            deq: 0,
            in_flight: 0,
        };
        // Link TRB with cycle bit clear (= not owned: the consumer starts with cycle state 1).
        ring.write_link(false, false);
        Ok(ring)
    }

    fn write_link(&self, cycle: bool, chain: bool) {
        let mut link = Link::new();
        link.set_ring_segment_pointer(self.mem.phys())
            .set_toggle_cycle();
        if chain {
            link.set_chain_bit();
        }
        if cycle {
            link.set_cycle_bit();
        }
        publish_trb(&self.mem, self.slots - 1, link.into_raw());
    }

    fn usable(&self) -> usize {
        self.slots - 1
    }

    fn free_slots(&self) -> usize {
        self.usable() - self.in_flight
    }

    fn phys_of(&self, index: usize) -> u64 {
        self.mem.phys() + (index * TRB_BYTES) as u64
    }

    fn index_of(&self, phys: u64) -> Option<usize> {
        let off = phys.checked_sub(self.mem.phys())?;
        if off % TRB_BYTES as u64 != 0 {
            return None;
        }
        let idx = usize::try_from(off / TRB_BYTES as u64).ok()?;
        (idx < self.usable()).then_some(idx)
    }

    /// Writes one TRB (cycle bit already set to `self.pcs` by the caller) and advances the
    /// enqueue pointer, handing the Link TRB over on wrap. `chain`: the TRB has its Chain bit
    /// set, so a TD continues through the Link TRB (xHCI 4.11.5.1: the Link TRB then has Chain
    /// set too).
    fn push(&mut self, raw: [u32; 4], chain: bool) -> u64 {
        debug_assert!(self.in_flight < self.usable());
        let phys = self.phys_of(self.enq);
        publish_trb(&self.mem, self.enq, raw);
        self.in_flight += 1;
        self.enq += 1;
        if self.enq == self.usable() {
            self.write_link(self.pcs, chain);
            self.enq = 0;
            self.pcs = !self.pcs;
        }
        phys
    }

    fn complete_up_to(&mut self, trb_phys: u64) -> Result<usize, NotInFlight> {
        let err = NotInFlight { trb_phys };
        let idx = self.index_of(trb_phys).ok_or(err)?;
        let usable = self.usable();
        let dist = (idx + usable - self.deq) % usable;
        if dist >= self.in_flight {
            return Err(err);
        }
        self.deq = (idx + 1) % usable;
        self.in_flight -= dist + 1;
        Ok(dist + 1)
    }

    fn dequeue_pointer(&self) -> u64 {
        self.phys_of(self.enq) | u64::from(self.pcs)
    }

    fn discard_in_flight(&mut self) -> usize {
        let n = self.in_flight;
        self.deq = self.enq;
        self.in_flight = 0;
        n
    }
}

macro_rules! common_ring_api {
    () => {
        /// Physical address of the segment (what the first dequeue pointer points at).
        pub fn base_phys(&self) -> u64 {
            self.ring.mem.phys()
        }
        /// Slots in the segment, including the Link TRB.
        pub fn slots(&self) -> usize {
            self.ring.slots
        }
        /// How many more TRBs can be enqueued now.
        pub fn free_slots(&self) -> usize {
            self.ring.free_slots()
        }
        /// TRBs enqueued and not yet reported complete.
        pub fn in_flight(&self) -> usize {
            self.ring.in_flight
        }
        /// Nothing outstanding.
        pub fn is_empty(&self) -> bool {
            self.ring.in_flight == 0
        }
        /// No free slot.
        pub fn is_full(&self) -> bool {
            self.ring.free_slots() == 0
        }
        /// Current producer cycle state.
        pub fn cycle_state(&self) -> bool {
            self.ring.pcs
        }
        /// Frees every TRB up to and including `trb_phys` (the TRB pointer of a completion
        /// event), handling wrap-around. Returns how many TRBs were freed.
        pub fn complete_up_to(&mut self, trb_phys: u64) -> Result<usize, NotInFlight> {
            self.ring.complete_up_to(trb_phys)
        }
        /// The next enqueue slot's physical address with the cycle state in bit 0: the value
        /// for Set TR Dequeue Pointer (New TR Dequeue Pointer | DCS) or CRCR (pointer | RCS).
        pub fn dequeue_pointer_for_reset(&self) -> u64 {
            self.ring.dequeue_pointer()
        }
        /// Forgets every outstanding TRB (after the controller was told to skip them with Set
        /// TR Dequeue Pointer = [`Self::dequeue_pointer_for_reset`]). Returns how many.
        pub fn discard_in_flight(&mut self) -> usize {
            self.ring.discard_in_flight()
        }
    };
}

/// A transfer ring for one endpoint.
#[derive(Debug)]
pub struct TransferRing {
    ring: ProducerRing,
}

fn set_chain(trb: &mut transfer::Allowed, chain: bool) {
    use transfer::Allowed as A;
    macro_rules! chain {
        ($x:expr) => {
            if chain {
                $x.set_chain_bit();
            } else {
                $x.clear_chain_bit();
            }
        };
    }
    match trb {
        A::Normal(x) => chain!(x),
        A::DataStage(x) => chain!(x),
        A::StatusStage(x) => chain!(x),
        A::Isoch(x) => chain!(x),
        A::EventData(x) => chain!(x),
        A::Noop(x) => chain!(x),
        A::SetupStage(_) => assert!(!chain, "a Setup Stage TRB has no Chain bit"),
        A::Link(_) => panic!("Link TRBs are managed by the ring"),
    }
}

fn chain_bit(trb: &transfer::Allowed) -> bool {
    use transfer::Allowed as A;
    match trb {
        A::Normal(x) => x.chain_bit(),
        A::DataStage(x) => x.chain_bit(),
        A::StatusStage(x) => x.chain_bit(),
        A::Isoch(x) => x.chain_bit(),
        A::EventData(x) => x.chain_bit(),
        A::Noop(x) => x.chain_bit(),
        A::SetupStage(_) => false,
        A::Link(x) => x.chain_bit(),
    }
}

impl TransferRing {
    /// A ring of [`DEFAULT_RING_TRBS`] slots.
    pub fn new(dma: &dyn DmaMemory) -> Result<Self, DmaError> {
        Self::with_slots(dma, DEFAULT_RING_TRBS)
    }

    /// A ring of `slots` slots (2..=4096, including the Link TRB).
    pub fn with_slots(dma: &dyn DmaMemory, slots: usize) -> Result<Self, DmaError> {
        Ok(Self {
            ring: ProducerRing::new(dma, slots)?,
        })
    }

    common_ring_api!();

    fn push(&mut self, mut trb: transfer::Allowed) -> u64 {
        assert!(
            !matches!(trb, transfer::Allowed::Link(_)),
            "Link TRBs are managed by the ring"
        );
        if self.ring.pcs {
            trb.set_cycle_bit();
        } else {
            trb.clear_cycle_bit();
        }
        let chain = chain_bit(&trb);
        self.ring.push(trb.into_raw(), chain)
    }

    /// Enqueues one TRB as given (its Chain bit untouched). Returns its physical address.
    ///
    /// # Panics
    /// On a Link TRB: the ring manages its own.
    pub fn enqueue(&mut self, trb: impl Into<transfer::Allowed>) -> Result<u64, RingFull> {
        if self.ring.free_slots() == 0 {
            return Err(RingFull);
        }
        Ok(self.push(trb.into()))
    }

    /// Enqueues one TD: sets the Chain bit on every TRB but the last (and clears it on the
    /// last). All or nothing: refused with [`RingFull`] if the free slots do not suffice (also
    /// when the TD is longer than the ring could ever hold).
    ///
    /// # Panics
    /// On an empty slice, a Link TRB, or a Setup Stage TRB that is not last (it has no Chain
    /// bit; use [`Self::enqueue_batch`] for the stages of a control transfer).
    pub fn enqueue_td(&mut self, trbs: &[transfer::Allowed]) -> Result<Td, RingFull> {
        assert!(!trbs.is_empty(), "empty TD");
        if trbs.len() > self.ring.free_slots() {
            return Err(RingFull);
        }
        let mut first = 0;
        let mut last = 0;
        for (i, trb) in trbs.iter().enumerate() {
            let mut t = *trb;
            set_chain(&mut t, i + 1 < trbs.len());
            last = self.push(t);
            if i == 0 {
                first = last;
            }
        }
        Ok(Td { first, last })
    }

    /// Enqueues several TRBs as given (Chain bits untouched), all or nothing: e.g. the Setup,
    /// Data and Status stage TDs of one control transfer.
    pub fn enqueue_batch(&mut self, trbs: &[transfer::Allowed]) -> Result<Td, RingFull> {
        assert!(!trbs.is_empty(), "empty batch");
        if trbs.len() > self.ring.free_slots() {
            return Err(RingFull);
        }
        let mut first = 0;
        let mut last = 0;
        for (i, trb) in trbs.iter().enumerate() {
            last = self.push(*trb);
            if i == 0 {
                first = last;
            }
        }
        Ok(Td { first, last })
    }
}

/// The command ring.
#[derive(Debug)]
pub struct CommandRing {
    ring: ProducerRing,
}

impl CommandRing {
    /// A ring of [`DEFAULT_RING_TRBS`] slots.
    pub fn new(dma: &dyn DmaMemory) -> Result<Self, DmaError> {
        Self::with_slots(dma, DEFAULT_RING_TRBS)
    }

    /// A ring of `slots` slots (2..=4096, including the Link TRB).
    pub fn with_slots(dma: &dyn DmaMemory, slots: usize) -> Result<Self, DmaError> {
        Ok(Self {
            ring: ProducerRing::new(dma, slots)?,
        })
    }

    common_ring_api!();

    /// The value to write to CRCR (Command Ring Pointer | RCS) when (re)starting the ring.
    pub fn crcr(&self) -> u64 {
        self.ring.dequeue_pointer()
    }

    /// Enqueues one command. Returns its physical address (the Command TRB Pointer of its
    /// Command Completion Event).
    ///
    /// # Panics
    /// On a Link TRB: the ring manages its own.
    pub fn enqueue(&mut self, trb: impl Into<command::Allowed>) -> Result<u64, RingFull> {
        let mut trb = trb.into();
        assert!(
            !matches!(trb, command::Allowed::Link(_)),
            "Link TRBs are managed by the ring"
        );
        if self.ring.free_slots() == 0 {
            return Err(RingFull);
        }
        if self.ring.pcs {
            trb.set_cycle_bit();
        } else {
            trb.clear_cycle_bit();
        }
        Ok(self.ring.push(trb.into_raw(), false))
    }
}
