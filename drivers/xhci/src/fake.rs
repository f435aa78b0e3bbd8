//! Host-test doubles: [`FakeDma`] (Vec-backed DMA memory with made-up physical addresses above
//! 4 GiB) and [`FakeController`] (consumes rings like an xHC: honours cycle bits, follows Link
//! TRBs with Toggle Cycle, stops at the first TRB it does not own, writes events).

use crate::dma::{DmaBacking, DmaError, DmaMemory, DmaRegion};
use crate::ring::TRB_BYTES;
use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::sync::{Arc, Weak};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use xhci::ring::trb::event::CompletionCode;
use xhci::ring::trb::{command, transfer, Type};

type Words = [AtomicU32];

struct FakeBacking {
    phys: u64,
    words: Arc<Words>,
}

impl DmaBacking for FakeBacking {
    fn phys(&self) -> u64 {
        self.phys
    }
    fn len_bytes(&self) -> usize {
        self.words.len() * 4
    }
    fn read_u32(&self, index: usize) -> u32 {
        self.words[index].load(Ordering::Acquire)
    }
    fn write_u32(&self, index: usize, value: u32) {
        self.words[index].store(value, Ordering::Release)
    }
}

#[derive(Default)]
struct FakeDmaState {
    next: u64,
    regions: Vec<(u64, Weak<Words>)>,
}

/// Vec-backed DMA memory; clones share the same address space.
#[derive(Clone, Default)]
pub struct FakeDma {
    state: Arc<spin::Mutex<FakeDmaState>>,
}

impl core::fmt::Debug for FakeDma {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FakeDma")
            .field("live_regions", &self.live_regions())
            .finish()
    }
}

/// First made-up physical address: above 4 GiB so high dwords are exercised.
pub const FAKE_PHYS_BASE: u64 = 0x1_0000_0000;

impl FakeDma {
    /// An empty address space.
    pub fn new() -> Self {
        let d = Self::default();
        d.state.lock().next = FAKE_PHYS_BASE;
        d
    }

    /// Regions allocated and not yet dropped.
    pub fn live_regions(&self) -> usize {
        let mut s = self.state.lock();
        s.regions.retain(|(_, w)| w.strong_count() > 0);
        s.regions.len()
    }

    fn find(&self, phys: u64) -> (Arc<Words>, usize) {
        let s = self.state.lock();
        for (base, w) in &s.regions {
            if let Some(words) = w.upgrade() {
                let end = base + words.len() as u64 * 4;
                if (*base..end).contains(&phys) {
                    assert_eq!(phys % 4, 0, "unaligned DMA access {phys:#x}");
                    return (words, ((phys - base) / 4) as usize);
                }
            }
        }
        panic!("device access to unmapped DMA address {phys:#x}");
    }

    /// Device-side read of the word at `phys`. Panics on unmapped memory.
    pub fn read_u32(&self, phys: u64) -> u32 {
        let (w, i) = self.find(phys);
        w[i].load(Ordering::Acquire)
    }

    /// Device-side write of the word at `phys`. Panics on unmapped memory.
    pub fn write_u32(&self, phys: u64, value: u32) {
        let (w, i) = self.find(phys);
        w[i].store(value, Ordering::Release)
    }

    /// Device-side read of a TRB: dword 3 (the cycle bit) first, like a consumer must, so a
    /// TRB the producer is writing is never seen with a fresh cycle bit and stale contents.
    pub fn read_trb(&self, phys: u64) -> [u32; 4] {
        let d3 = self.read_u32(phys + 12);
        core::sync::atomic::fence(Ordering::Acquire);
        [
            self.read_u32(phys),
            self.read_u32(phys + 4),
            self.read_u32(phys + 8),
            d3,
        ]
    }
}

impl DmaMemory for FakeDma {
    fn alloc(&self, size: usize, align: usize, boundary: usize) -> Result<DmaRegion, DmaError> {
        if size == 0 || !align.is_power_of_two() || (boundary != 0 && size > boundary) {
            return Err(DmaError::Unsatisfiable);
        }
        let mut s = self.state.lock();
        let align = align.max(4) as u64;
        let mut addr = s.next.next_multiple_of(align);
        if boundary != 0 {
            let b = boundary as u64;
            if addr / b != (addr + size as u64 - 1) / b {
                addr = addr.next_multiple_of(b);
            }
        }
        s.next = addr + size as u64 + 64;
        let words: Arc<Words> = (0..size.div_ceil(4)).map(|_| AtomicU32::new(0)).collect();
        s.regions.push((addr, Arc::downgrade(&words)));
        Ok(DmaRegion::new(Box::new(FakeBacking { phys: addr, words })))
    }
}

/// Raw event TRBs. Hand-written because the `xhci` crate's event TRB types are read-only
/// (only a controller produces events).
pub mod events {
    use super::*;

    fn ptr(p: u64) -> [u32; 2] {
        [p as u32, (p >> 32) as u32]
    }

    /// Transfer Event TRB (xHCI 6.4.2.1), cycle bit clear.
    pub fn transfer(
        trb: u64,
        code: CompletionCode,
        residual: u32,
        dci: u8,
        slot: u8,
        event_data: bool,
    ) -> [u32; 4] {
        let [lo, hi] = ptr(trb);
        [
            lo,
            hi,
            (residual & 0xff_ffff) | ((code as u32) << 24),
            ((Type::TransferEvent as u32) << 10)
                | (u32::from(event_data) << 2)
                | (u32::from(dci) << 16)
                | (u32::from(slot) << 24),
        ]
    }

    /// Command Completion Event TRB (xHCI 6.4.2.2), cycle bit clear.
    pub fn command_completion(trb: u64, code: CompletionCode, slot: u8) -> [u32; 4] {
        let [lo, hi] = ptr(trb);
        [
            lo,
            hi,
            (code as u32) << 24,
            ((Type::CommandCompletion as u32) << 10) | (u32::from(slot) << 24),
        ]
    }

    /// Port Status Change Event TRB (xHCI 6.4.2.3), cycle bit clear.
    pub fn port_status_change(port: u8) -> [u32; 4] {
        [
            u32::from(port) << 24,
            0,
            (CompletionCode::Success as u32) << 24,
            (Type::PortStatusChange as u32) << 10,
        ]
    }
}

/// The event ring could not take another event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRingFull;

/// A TRB a fake endpoint consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Consumed {
    /// Where it was.
    pub phys: u64,
    /// Its dwords as read.
    pub raw: [u32; 4],
}

#[derive(Debug, Clone, Copy)]
struct RingCursor {
    deq: u64,
    ccs: bool,
}

impl RingCursor {
    fn from_pointer(v: u64) -> Self {
        Self {
            deq: v & !0xf,
            ccs: v & 1 != 0,
        }
    }
}

#[derive(Debug)]
struct FakeEndpoint {
    cursor: RingCursor,
    halted: bool,
    /// Stall the TRB after this many more TRBs succeed.
    stall_after: Option<usize>,
}

/// A fake xHC with one interrupter.
#[derive(Debug)]
pub struct FakeController {
    dma: FakeDma,
    seg: u64,
    seg_trbs: usize,
    ev_enq: usize,
    ev_pcs: bool,
    erdp: u64,
    endpoints: BTreeMap<(u8, u8), FakeEndpoint>,
    cmd: Option<RingCursor>,
    next_slot: u8,
    /// Events posted so far.
    pub events_posted: usize,
}

impl FakeController {
    /// "Writes" ERSTSZ = 1 and ERSTBA: reads the first ERST entry.
    pub fn new(dma: FakeDma, erst_phys: u64) -> Self {
        let e = dma.read_trb(erst_phys);
        let seg = u64::from(e[0]) | (u64::from(e[1]) << 32);
        let seg_trbs = (e[2] & 0xffff) as usize;
        Self {
            dma,
            seg,
            seg_trbs,
            ev_enq: 0,
            ev_pcs: true,
            erdp: seg,
            endpoints: BTreeMap::new(),
            cmd: None,
            next_slot: 1,
            events_posted: 0,
        }
    }

    /// Software wrote ERDP.
    pub fn write_erdp(&mut self, value: u64) {
        self.erdp = value & !0xf;
    }

    fn event_ring_has_room(&self) -> bool {
        // Full when advancing the enqueue pointer would make it equal the dequeue pointer.
        let next = (self.ev_enq + 1) % self.seg_trbs;
        self.seg + (next * TRB_BYTES) as u64 != self.erdp
    }

    /// Writes one event (dwords 0-2, then dword 3 with the producer cycle bit).
    pub fn post_event(&mut self, mut raw: [u32; 4]) -> Result<(), EventRingFull> {
        if !self.event_ring_has_room() {
            return Err(EventRingFull);
        }
        let at = self.seg + (self.ev_enq * TRB_BYTES) as u64;
        for (i, w) in raw.iter().take(3).enumerate() {
            self.dma.write_u32(at + 4 * i as u64, *w);
        }
        raw[3] = (raw[3] & !1) | u32::from(self.ev_pcs);
        self.dma.write_u32(at + 12, raw[3]);
        self.ev_enq += 1;
        if self.ev_enq == self.seg_trbs {
            self.ev_enq = 0;
            self.ev_pcs = !self.ev_pcs;
        }
        self.events_posted += 1;
        Ok(())
    }

    /// A port changed state.
    pub fn port_status_change(&mut self, port: u8) -> Result<(), EventRingFull> {
        self.post_event(events::port_status_change(port))
    }

    /// An endpoint was configured with TR Dequeue Pointer | DCS = `ring`.
    pub fn add_endpoint(&mut self, slot: u8, dci: u8, ring: u64) {
        self.endpoints.insert(
            (slot, dci),
            FakeEndpoint {
                cursor: RingCursor::from_pointer(ring),
                halted: false,
                stall_after: None,
            },
        );
    }

    /// Reset Endpoint + Set TR Dequeue Pointer.
    pub fn reset_endpoint(&mut self, slot: u8, dci: u8, ring: u64) {
        let ep = self.endpoints.get_mut(&(slot, dci)).expect("endpoint");
        ep.halted = false;
        ep.cursor = RingCursor::from_pointer(ring);
    }

    /// The TRB after `n` more successful TRBs will STALL.
    pub fn inject_stall(&mut self, slot: u8, dci: u8, n: usize) {
        self.endpoints
            .get_mut(&(slot, dci))
            .expect("endpoint")
            .stall_after = Some(n);
    }

    /// The endpoint is halted.
    pub fn is_halted(&self, slot: u8, dci: u8) -> bool {
        self.endpoints[&(slot, dci)].halted
    }

    /// Takes the next whole TD (owned TRBs up to the first without Chain, following Link
    /// TRBs) and advances past it; `None` if the endpoint is halted or the TD is not complete.
    pub fn take_td(&mut self, slot: u8, dci: u8) -> Option<Vec<Consumed>> {
        let dma = &self.dma;
        let ep = self.endpoints.get_mut(&(slot, dci))?;
        if ep.halted {
            return None;
        }
        let mut cur = ep.cursor;
        let mut out = Vec::new();
        let mut links = 0;
        loop {
            let raw = dma.read_trb(cur.deq);
            if (raw[3] & 1 != 0) != cur.ccs {
                return None;
            }
            let trb = transfer::Allowed::try_from(raw).ok()?;
            if let transfer::Allowed::Link(l) = trb {
                links += 1;
                assert!(links <= 2, "ring of Link TRBs only");
                if l.toggle_cycle() {
                    cur.ccs = !cur.ccs;
                }
                cur.deq = l.ring_segment_pointer();
                continue;
            }
            links = 0;
            out.push(Consumed { phys: cur.deq, raw });
            cur.deq += TRB_BYTES as u64;
            let chain = match trb {
                transfer::Allowed::Normal(n) => n.chain_bit(),
                _ => false,
            };
            if !chain {
                break;
            }
        }
        ep.cursor = cur;
        Some(out)
    }

    /// The owned TRB at the endpoint's dequeue pointer (after Link TRBs), if any.
    pub fn next_owned_trb(&self, slot: u8, dci: u8) -> Option<u64> {
        let ep = self.endpoints.get(&(slot, dci))?;
        let mut cur = ep.cursor;
        for _ in 0..3 {
            let raw = self.dma.read_trb(cur.deq);
            if (raw[3] & 1 != 0) != cur.ccs {
                return None;
            }
            match transfer::Allowed::try_from(raw) {
                Ok(transfer::Allowed::Link(l)) => {
                    if l.toggle_cycle() {
                        cur.ccs = !cur.ccs;
                    }
                    cur.deq = l.ring_segment_pointer();
                }
                _ => return Some(cur.deq),
            }
        }
        None
    }

    /// Marks the endpoint halted (it stops consuming TRBs until `reset_endpoint`).
    pub fn set_halted(&mut self, slot: u8, dci: u8) {
        self.endpoints
            .get_mut(&(slot, dci))
            .expect("endpoint")
            .halted = true;
    }

    /// Forgets a slot's endpoints (Disable Slot).
    pub fn remove_slot(&mut self, slot: u8) {
        self.endpoints.retain(|(s, _), _| *s != slot);
    }

    /// The event ring can take another event.
    pub fn has_event_room(&self) -> bool {
        self.event_ring_has_room()
    }

    /// Rings the endpoint's doorbell: consumes up to `budget` owned TRBs.
    pub fn run_endpoint(&mut self, slot: u8, dci: u8, budget: usize) -> Vec<Consumed> {
        self.run_endpoint_with(slot, dci, budget, &mut |_| {})
    }

    /// [`Self::run_endpoint`], calling `on_trb` for each TRB before its event is posted (the
    /// device's data must be in memory before the controller reports the TRB done).
    pub fn run_endpoint_with(
        &mut self,
        slot: u8,
        dci: u8,
        budget: usize,
        on_trb: &mut dyn FnMut(&Consumed),
    ) -> Vec<Consumed> {
        let mut out = Vec::new();
        let mut ep = self.endpoints.remove(&(slot, dci)).expect("endpoint");
        let mut links = 0;
        while !ep.halted && out.len() < budget {
            let phys = ep.cursor.deq;
            let raw = self.dma.read_trb(phys);
            // Cycle bit: bit 0 of dword 3, checked before typing the TRB (stale slots hold
            // anything).
            if (raw[3] & 1 != 0) != ep.cursor.ccs {
                break;
            }
            let trb = match transfer::Allowed::try_from(raw) {
                Ok(t) => t,
                Err(_) => {
                    if self.event_ring_has_room() {
                        let e =
                            events::transfer(phys, CompletionCode::TrbError, 0, dci, slot, false);
                        self.post_event(e).unwrap();
                        ep.halted = true;
                    }
                    break;
                }
            };
            if let transfer::Allowed::Link(l) = trb {
                links += 1;
                assert!(links <= 2, "ring of Link TRBs only");
                if l.toggle_cycle() {
                    ep.cursor.ccs = !ep.cursor.ccs;
                }
                ep.cursor.deq = l.ring_segment_pointer();
                continue;
            }
            links = 0;
            if !self.event_ring_has_room() {
                break;
            }
            if ep.stall_after == Some(0) {
                ep.stall_after = None;
                ep.halted = true;
                let e = events::transfer(phys, CompletionCode::StallError, 0, dci, slot, false);
                self.post_event(e).unwrap();
                break;
            }
            if let Some(n) = ep.stall_after.as_mut() {
                *n -= 1;
            }
            let c = Consumed { phys, raw };
            on_trb(&c);
            out.push(c);
            ep.cursor.deq += TRB_BYTES as u64;
            if trb.interrupt_on_completion() {
                let e = events::transfer(phys, CompletionCode::Success, 0, dci, slot, false);
                self.post_event(e).unwrap();
            }
        }
        self.endpoints.insert((slot, dci), ep);
        out
    }

    /// Software wrote CRCR.
    pub fn write_crcr(&mut self, crcr: u64) {
        self.cmd = Some(RingCursor::from_pointer(crcr));
    }

    /// Rings the command doorbell: runs owned commands, each completing with Success (Enable
    /// Slot hands out slot IDs 1, 2, ...).
    pub fn run_commands(&mut self) -> Vec<Consumed> {
        let mut out = Vec::new();
        let mut c = self.cmd.expect("CRCR not written");
        loop {
            let phys = c.deq;
            let raw = self.dma.read_trb(phys);
            if (raw[3] & 1 != 0) != c.ccs || !self.event_ring_has_room() {
                break;
            }
            let slot = match command::Allowed::try_from(raw) {
                Ok(command::Allowed::Link(l)) => {
                    if l.toggle_cycle() {
                        c.ccs = !c.ccs;
                    }
                    c.deq = l.ring_segment_pointer();
                    continue;
                }
                Ok(command::Allowed::EnableSlot(_)) => {
                    self.next_slot += 1;
                    self.next_slot - 1
                }
                Ok(_) => 0,
                Err(_) => {
                    let e = events::command_completion(phys, CompletionCode::TrbError, 0);
                    self.post_event(e).unwrap();
                    c.deq += TRB_BYTES as u64;
                    continue;
                }
            };
            out.push(Consumed { phys, raw });
            let e = events::command_completion(phys, CompletionCode::Success, slot);
            self.post_event(e).unwrap();
            c.deq += TRB_BYTES as u64;
        }
        self.cmd = Some(c);
        out
    }
}
