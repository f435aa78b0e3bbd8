//! Ring scenarios run through the FakeController.

use crate::completion::{check, Completed, UsbError};
use crate::event::{Event, EventRing};
use crate::fake::{FakeController, FakeDma};
use crate::ring::{CommandRing, RingFull, TransferRing, DEFAULT_RING_TRBS};
use std::vec::Vec;
use xhci::ring::trb::{command, transfer};

const SLOT: u8 = 1;
const DCI: u8 = 3;

fn normal(tag: u64, ioc: bool) -> transfer::Allowed {
    let mut n = transfer::Normal::new();
    n.set_data_buffer_pointer(tag).set_trb_transfer_length(64);
    if ioc {
        n.set_interrupt_on_completion();
    }
    n.into()
}

fn tag_of(raw: [u32; 4]) -> u64 {
    match transfer::Allowed::try_from(raw).unwrap() {
        transfer::Allowed::Normal(n) => n.data_buffer_pointer(),
        t => panic!("{t:?}"),
    }
}

struct Rig {
    dma: FakeDma,
    ring: TransferRing,
    events: EventRing,
    hc: FakeController,
}

fn rig(slots: usize, ev_slots: usize) -> Rig {
    let dma = FakeDma::new();
    let ring = TransferRing::with_slots(&dma, slots).unwrap();
    let events = EventRing::with_slots(&dma, ev_slots).unwrap();
    let mut hc = FakeController::new(dma.clone(), events.erst_phys());
    hc.add_endpoint(SLOT, DCI, ring.dequeue_pointer_for_reset());
    Rig {
        dma,
        ring,
        events,
        hc,
    }
}

impl Rig {
    /// Drains events, completing TRBs on the ring; returns the transfer events.
    fn drain(&mut self) -> Vec<(u64, Result<Completed, UsbError>)> {
        let mut out = Vec::new();
        while let Some(ev) = self.events.next_event() {
            match ev {
                Event::Transfer {
                    trb_ptr,
                    code,
                    endpoint_id,
                    slot,
                    ..
                } => {
                    assert_eq!((slot, endpoint_id), (SLOT, DCI));
                    let r = check(code);
                    if r.is_ok() {
                        self.ring.complete_up_to(trb_ptr).unwrap();
                    }
                    out.push((trb_ptr, r));
                }
                e => panic!("unexpected {e:?}"),
            }
        }
        self.hc.write_erdp(self.events.erdp().raw());
        out
    }
}

#[test]
fn dma_alignment_and_boundary() {
    let dma = FakeDma::new();
    let _a = crate::dma::DmaMemory::alloc(&dma, 100, 64, 0).unwrap();
    let r = TransferRing::new(&dma).unwrap();
    assert_eq!(r.slots(), DEFAULT_RING_TRBS);
    assert_eq!(r.base_phys() % 64, 0);
    assert_eq!(r.base_phys() >> 16, (r.base_phys() + 4095) >> 16);
    assert!(r.base_phys() > u64::from(u32::MAX), "high dword exercised");
    // A 4 KiB ring placed right below a 64 KiB line must be moved past it.
    let big = TransferRing::with_slots(&dma, 4096).unwrap();
    assert_eq!(big.base_phys() % 0x1_0000, 0);
    assert_eq!(dma.live_regions(), 3);
    drop((r, big));
    assert_eq!(dma.live_regions(), 1);
}

#[test]
fn link_trb_initial_state() {
    let dma = FakeDma::new();
    let r = TransferRing::with_slots(&dma, 8).unwrap();
    let link = dma.read_trb(r.base_phys() + 7 * 16);
    let l = match transfer::Allowed::try_from(link).unwrap() {
        transfer::Allowed::Link(l) => l,
        t => panic!("{t:?}"),
    };
    assert_eq!(l.ring_segment_pointer(), r.base_phys());
    assert!(l.toggle_cycle());
    assert!(!l.cycle_bit(), "not owned before the ring wraps");
    assert!(r.is_empty());
    assert_eq!(r.free_slots(), 7);
    assert_eq!(r.dequeue_pointer_for_reset(), r.base_phys() | 1);
}

#[test]
fn wrap_many_laps_single_trbs() {
    let mut g = rig(16, 16);
    for tag in 0..15 * 40 {
        let p = g.ring.enqueue(normal(tag, true)).unwrap();
        let c = g.hc.run_endpoint(SLOT, DCI, usize::MAX);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].phys, p);
        assert_eq!(tag_of(c[0].raw), tag);
        let ev = g.drain();
        assert_eq!(ev, [(p, Ok(Completed::Full))]);
        assert!(g.ring.is_empty());
    }
    // 600 TRBs on 15 usable slots = 40 laps: cycle state back to where it started.
    assert!(g.ring.cycle_state());
}

#[test]
fn full_and_empty() {
    let mut g = rig(8, 16);
    let mut phys = Vec::new();
    for t in 0..7 {
        phys.push(g.ring.enqueue(normal(t, t == 6)).unwrap());
    }
    assert!(g.ring.is_full());
    assert_eq!(g.ring.enqueue(normal(99, true)), Err(RingFull));
    assert_eq!(g.ring.enqueue_td(&[normal(99, true)]), Err(RingFull));
    // The controller consumes all 7, following the now-owned Link, then stops at slot 0
    // (cycle bit stale from the previous lap).
    let c = g.hc.run_endpoint(SLOT, DCI, usize::MAX);
    assert_eq!(c.iter().map(|c| c.phys).collect::<Vec<_>>(), phys);
    let ev = g.drain();
    assert_eq!(ev.len(), 1, "only the last had IOC");
    assert!(g.ring.is_empty());
    assert_eq!(g.ring.free_slots(), 7);
    assert!(!g.ring.cycle_state());
    // Empty again: the controller finds nothing.
    assert!(g.hc.run_endpoint(SLOT, DCI, usize::MAX).is_empty());
    // Partial completion frees exactly up to the reported TRB.
    let a = g.ring.enqueue(normal(1, true)).unwrap();
    let _b = g.ring.enqueue(normal(2, true)).unwrap();
    assert_eq!(g.ring.complete_up_to(a), Ok(1));
    assert_eq!(g.ring.in_flight(), 1);
    assert!(g.ring.complete_up_to(a).is_err(), "already completed");
    assert!(g.ring.complete_up_to(0x1234).is_err(), "not on this ring");
}

#[test]
fn chained_td_across_link() {
    let mut g = rig(8, 16);
    for t in 0..5 {
        g.ring.enqueue(normal(t, true)).unwrap();
    }
    g.hc.run_endpoint(SLOT, DCI, usize::MAX);
    assert_eq!(g.drain().len(), 5);
    // Not enough room: all-or-nothing.
    for t in 0..5 {
        g.ring.enqueue(normal(10 + t, false)).unwrap();
    }
    let free = g.ring.free_slots();
    let td: Vec<_> = (0..3).map(|t| normal(100 + t, t == 2)).collect();
    assert_eq!(g.ring.enqueue_td(&td), Err(RingFull));
    assert_eq!(g.ring.free_slots(), free);
    g.ring.discard_in_flight();
    g.hc.run_endpoint(SLOT, DCI, usize::MAX);
    // Now a 5-TRB TD spanning the Link TRB (slots 3,4,5,6 | link | 0).
    let td: Vec<_> = (0..5).map(|t| normal(200 + t, t == 4)).collect();
    let h = g.ring.enqueue_td(&td).unwrap();
    let link = transfer::Allowed::try_from(g.dma.read_trb(g.ring.base_phys() + 7 * 16)).unwrap();
    match link {
        transfer::Allowed::Link(l) => assert!(l.chain_bit(), "TD continues through the Link"),
        t => panic!("{t:?}"),
    }
    let c = g.hc.run_endpoint(SLOT, DCI, usize::MAX);
    assert_eq!(c.len(), 5);
    for (i, c) in c.iter().enumerate() {
        assert_eq!(tag_of(c.raw), 200 + i as u64);
        let chain = match transfer::Allowed::try_from(c.raw).unwrap() {
            transfer::Allowed::Normal(n) => n.chain_bit(),
            _ => unreachable!(),
        };
        assert_eq!(chain, i < 4);
    }
    assert_eq!(c[0].phys, h.first);
    assert_eq!(c[4].phys, h.last);
    let ev = g.drain();
    assert_eq!(ev, [(h.last, Ok(Completed::Full))]);
    assert!(g.ring.is_empty());
}

#[test]
fn stall_mid_queue_then_dequeue_reset() {
    let mut g = rig(16, 16);
    let phys: Vec<_> = (0..6)
        .map(|t| g.ring.enqueue(normal(t, true)).unwrap())
        .collect();
    g.hc.inject_stall(SLOT, DCI, 2);
    let c = g.hc.run_endpoint(SLOT, DCI, usize::MAX);
    assert_eq!(c.len(), 2);
    let ev = g.drain();
    assert_eq!(ev.len(), 3);
    assert_eq!(ev[2], (phys[2], Err(UsbError::Stall)));
    assert!(ev[2].1.unwrap_err().halts_endpoint());
    assert!(g.hc.is_halted(SLOT, DCI));
    // Framework: Reset Endpoint + Set TR Dequeue Pointer past everything queued.
    assert_eq!(g.ring.in_flight(), 4);
    assert_eq!(g.ring.discard_in_flight(), 4);
    let deq = g.ring.dequeue_pointer_for_reset();
    assert_eq!(deq, (g.ring.base_phys() + 6 * 16) | 1);
    let mut cmd = command::SetTrDequeuePointer::new();
    cmd.set_new_tr_dequeue_pointer(deq & !0xf)
        .set_endpoint_id(DCI)
        .set_slot_id(SLOT);
    if deq & 1 != 0 {
        cmd.set_dequeue_cycle_state();
    }
    let raw = cmd.into_raw();
    assert_eq!(
        u64::from(raw[0]) | (u64::from(raw[1]) << 32),
        deq,
        "pointer | DCS"
    );
    g.hc.reset_endpoint(SLOT, DCI, deq);
    // Resubmitted data flows in order, nothing stale is re-run.
    let again: Vec<_> = (10..25)
        .map(|t| g.ring.enqueue(normal(t, true)).unwrap())
        .collect();
    let c = g.hc.run_endpoint(SLOT, DCI, usize::MAX);
    assert_eq!(
        c.iter().map(|c| tag_of(c.raw)).collect::<Vec<_>>(),
        (10..25).collect::<Vec<_>>()
    );
    assert_eq!(c.iter().map(|c| c.phys).collect::<Vec<_>>(), again);
    assert_eq!(g.drain().len(), 15);
    assert!(g.ring.is_empty());
}

#[test]
fn event_ring_cycle_flip_and_erdp() {
    let mut g = rig(16, 16);
    let seg = g.events.segment_phys();
    assert_eq!(g.events.erdp().pointer, seg);
    assert_eq!(
        g.events.erdp().raw(),
        seg | 8,
        "EHB written as 1 to clear it"
    );
    assert!(g.events.next_event().is_none());
    // Fill: 15 events fit (one slot kept free so full != empty), the 16th does not.
    for p in 1..=15 {
        g.hc.port_status_change(p).unwrap();
    }
    assert!(g.hc.port_status_change(16).is_err());
    for p in 1..=15 {
        assert_eq!(
            g.events.next_event(),
            Some(Event::PortStatusChange { port: p })
        );
    }
    assert!(g.events.next_event().is_none());
    assert_eq!(g.events.erdp().pointer, seg + 15 * 16);
    assert!(g.events.cycle_state());
    g.hc.write_erdp(g.events.erdp().raw());
    g.hc.port_status_change(1).unwrap();
    assert_eq!(
        g.events.next_event(),
        Some(Event::PortStatusChange { port: 1 })
    );
    assert!(!g.events.cycle_state(), "flipped on wrap");
    assert_eq!(g.events.erdp().pointer, seg);
    // Many laps.
    for lap in 0..50u32 {
        for i in 0..7u8 {
            g.hc.port_status_change(i + 1).unwrap();
        }
        for i in 0..7u8 {
            assert_eq!(
                g.events.next_event(),
                Some(Event::PortStatusChange { port: i + 1 }),
                "lap {lap}"
            );
        }
        assert!(g.events.next_event().is_none());
        g.hc.write_erdp(g.events.erdp().raw());
    }
    let mut reg = xhci::registers::runtime::EventRingDequeuePointerRegister::default();
    g.events.erdp().apply(&mut reg);
    assert_eq!(reg.event_ring_dequeue_pointer(), g.events.erdp().pointer);
    assert!(reg.event_handler_busy(), "EHB written as 1 (RW1C)");
    assert_eq!(reg.dequeue_erst_segment_index(), 0);
}

#[test]
fn erst_entry_layout() {
    let dma = FakeDma::new();
    let ev = EventRing::with_slots(&dma, 32).unwrap();
    let e = dma.read_trb(ev.erst_phys());
    assert_eq!(u64::from(e[0]) | (u64::from(e[1]) << 32), ev.segment_phys());
    assert_eq!(e[2], 32);
    assert_eq!(e[3], 0);
    assert_eq!(ev.erst_size(), 1);
    assert_eq!(ev.erst_phys() % 64, 0);
}

#[test]
fn command_ring_round_trip() {
    let dma = FakeDma::new();
    let mut cmds = CommandRing::with_slots(&dma, 4).unwrap();
    let mut events = EventRing::with_slots(&dma, 16).unwrap();
    let mut hc = FakeController::new(dma.clone(), events.erst_phys());
    hc.write_crcr(cmds.crcr());
    for round in 0..10u8 {
        let a = cmds.enqueue(command::EnableSlot::new()).unwrap();
        let b = cmds.enqueue(command::Noop::new()).unwrap();
        let c = cmds.enqueue(command::Noop::new()).unwrap();
        assert_eq!(cmds.enqueue(command::Noop::new()), Err(RingFull));
        assert_eq!(hc.run_commands().len(), 3);
        let mut got = Vec::new();
        while let Some(Event::CommandCompletion {
            trb_ptr,
            code,
            slot,
            ..
        }) = events.next_event()
        {
            assert_eq!(check(code), Ok(Completed::Full));
            cmds.complete_up_to(trb_ptr).unwrap();
            got.push((trb_ptr, slot));
        }
        hc.write_erdp(events.erdp().raw());
        assert_eq!(got, [(a, round + 1), (b, 0), (c, 0)]);
        assert!(cmds.is_empty());
    }
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn randomized_producer_consumer() {
    for seed in [0x9e37_79b9_7f4a_7c15u64, 1, 0xdead_beef] {
        let mut rng = XorShift(seed);
        let slots = 32;
        let mut g = rig(slots, 16);
        let mut next_tag = 0u64;
        let mut consumed_tags = Vec::new();
        let mut pending_tds = std::collections::VecDeque::new();
        let mut laps_cycle_flips = 0;
        let mut last_cycle = g.ring.cycle_state();
        let total = 50 * (slots as u64 - 1);
        let mut steps = 0;
        while consumed_tags.len() < total as usize {
            steps += 1;
            assert!(steps < 100_000, "bounded");
            // Producer: a few TDs of 1..=5 TRBs, last with IOC.
            for _ in 0..rng.below(4) {
                let len = 1 + rng.below(5);
                let td: Vec<_> = (0..len)
                    .map(|i| normal(next_tag + i, i + 1 == len))
                    .collect();
                match g.ring.enqueue_td(&td) {
                    Ok(h) => {
                        pending_tds.push_back(h.last);
                        next_tag += len;
                    }
                    Err(RingFull) => assert!(g.ring.free_slots() < len as usize),
                }
                if g.ring.cycle_state() != last_cycle {
                    last_cycle = g.ring.cycle_state();
                    laps_cycle_flips += 1;
                }
            }
            // Consumer: a random budget.
            let budget = rng.below(12) as usize;
            for c in g.hc.run_endpoint(SLOT, DCI, budget) {
                consumed_tags.push(tag_of(c.raw));
            }
            if rng.below(3) != 0 {
                for (p, r) in g.drain() {
                    assert_eq!(r, Ok(Completed::Full));
                    assert_eq!(pending_tds.pop_front(), Some(p), "TD completions in order");
                }
            }
            assert!(g.ring.in_flight() < slots);
        }
        // Finish.
        loop {
            let c = g.hc.run_endpoint(SLOT, DCI, usize::MAX);
            consumed_tags.extend(c.iter().map(|c| tag_of(c.raw)));
            let ev = g.drain();
            for (p, _) in &ev {
                assert_eq!(pending_tds.pop_front(), Some(*p));
            }
            if c.is_empty() && ev.is_empty() {
                break;
            }
        }
        assert!(pending_tds.is_empty());
        assert!(g.ring.is_empty());
        assert_eq!(
            consumed_tags,
            (0..next_tag).collect::<Vec<_>>(),
            "exactly once, in order"
        );
        assert!(laps_cycle_flips >= 10, "only {laps_cycle_flips} wraps");
    }
}
