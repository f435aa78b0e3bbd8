//! The [`Controller`] against a register-level fake: a 16 KiB MMIO space in host memory behind a
//! fake `Mapper`, and a `FakeHc` that plays the controller each time the driver waits (its
//! `Os::delay_us` / `wait_for_interrupt` call `tick`). Rings and events go through the
//! `FakeController` of `fake.rs`; commands, PORTSC and the legacy capability are played here.

use crate::controller::{Completion, Controller, HandoffResult, Os};
use crate::fake::{events, Consumed, FakeController, FakeDma};
use crate::port;
use std::boxed::Box;
use std::collections::{BTreeMap, VecDeque};
use std::string::String;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::vec;
use std::vec::Vec;
use tether_usb::host::{Attachment, HostController, TransferError};
use tether_usb::request::SetupPacket;
use tether_usb::speed::Speed;
use xhci::accessor::Mapper;
use xhci::ring::trb::event::CompletionCode;
use xhci::ring::trb::{command, transfer};

const MMIO_PHYS: usize = 0xfe00_0000;
const WORDS: usize = 4096;

#[repr(C, align(4096))]
struct Space([AtomicU32; WORDS]);

// Register offsets (bytes) of the fake.
const OP: usize = 0x20;
const USBCMD: usize = OP;
const USBSTS: usize = OP + 0x04;
const CRCR: usize = OP + 0x18;
const DCBAAP: usize = OP + 0x30;
const CONFIG: usize = OP + 0x38;
const PORTS: usize = OP + 0x400;
const RT: usize = 0x1000;
const IMAN: usize = RT + 0x20;
const IMOD: usize = RT + 0x24;
const ERSTSZ: usize = RT + 0x28;
const ERSTBA: usize = RT + 0x30;
const ERDP: usize = RT + 0x38;
const DB: usize = 0x2000;
const XECP: usize = 0x3000;
const DB_SENTINEL: u32 = 0xdead_beef;

#[derive(Clone)]
struct FakeMapper {
    space: Arc<Space>,
}

impl Mapper for FakeMapper {
    // Implementing the crate's unsafe trait method; it only computes an address.
    #[allow(unsafe_code)]
    unsafe fn map(&mut self, phys_start: usize, bytes: usize) -> core::num::NonZeroUsize {
        assert!(phys_start >= MMIO_PHYS && phys_start + bytes <= MMIO_PHYS + WORDS * 4);
        let base = self.space.0.as_ptr() as usize;
        core::num::NonZeroUsize::new(base + (phys_start - MMIO_PHYS)).unwrap()
    }
    fn unmap(&mut self, _virt_start: usize, _bytes: usize) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InitSnapshot {
    erstsz: u32,
    erstba: u64,
    erdp: u64,
    crcr: u64,
    dcbaap: u64,
    config: u32,
    imod: u32,
}

struct FakeHc {
    space: Arc<Space>,
    dma: FakeDma,
    fc: Option<FakeController>,
    csz64: bool,
    /// Ticks until the BIOS lets go (None: never).
    bios_release_after: Option<u32>,
    cnr_ticks: u32,
    log: Vec<String>,
    init: Option<InitSnapshot>,
    cmd_deq: u64,
    cmd_ccs: bool,
    hang_commands: bool,
    hung: Option<u64>,
    next_slot: u8,
    /// What EP0 IN data stages return.
    ep0_response: Vec<u8>,
    /// What EP0 OUT data stages carried.
    ep0_out: Vec<Vec<u8>>,
    ep0_trbs: Vec<Consumed>,
    /// (slot, root port, speed, max packet) from Address Device.
    addressed: Vec<(u8, u8, u8, u16)>,
    evaluated_mps: Vec<u16>,
    portsc: Vec<u32>,
    port_last: Vec<u32>,
    port_reset_ticks: Vec<u32>,
    ped_written: u32,
    /// EP0 doorbells are swallowed (a device that never answers).
    ep0_dead: bool,
    /// The next this many Stop Endpoint commands find the endpoint Running again right after
    /// (as QEMU's device wake-up restarts a stopped endpoint).
    restart_after_stop: u32,
    /// Bulk/interrupt endpoints by (slot, DCI).
    bulk: BTreeMap<(u8, u8), BulkEp>,
    /// Configure Endpoint commands: (slot, add flags, [(DCI, EP type, max packet, interval,
    /// TR dequeue)]).
    configured: Vec<Configured>,
}

/// One Configure Endpoint: (slot, add flags, [(DCI, EP type, max packet, interval, TR dequeue)]).
type Configured = (u8, u32, Vec<(u8, u32, u32, u32, u64)>);

/// A fake bulk/interrupt endpoint.
#[derive(Default)]
struct BulkEp {
    dir_in: bool,
    /// IN: frames the device has to send, one per TD.
    frames: VecDeque<Vec<u8>>,
    /// OUT: what each TD carried.
    out: Vec<Vec<u8>>,
    /// STALL the TD after this many more succeed.
    stall_after: Option<usize>,
    /// The device NAKs forever (OUT).
    nak: bool,
    /// Every TD as consumed.
    tds: Vec<Vec<Consumed>>,
}

impl FakeHc {
    fn r32(&self, off: usize) -> u32 {
        self.space.0[off / 4].load(Ordering::SeqCst)
    }
    fn w32(&self, off: usize, v: u32) {
        self.space.0[off / 4].store(v, Ordering::SeqCst)
    }
    fn r64(&self, off: usize) -> u64 {
        u64::from(self.r32(off)) | (u64::from(self.r32(off + 4)) << 32)
    }
    fn w64(&self, off: usize, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }

    fn new(dma: FakeDma, csz64: bool, scratchpads: u32) -> Self {
        let space = Arc::new(Space(core::array::from_fn(|_| AtomicU32::new(0))));
        let mut hc = Self {
            space,
            dma,
            fc: None,
            csz64,
            bios_release_after: Some(3),
            cnr_ticks: 2,
            log: Vec::new(),
            init: None,
            cmd_deq: 0,
            cmd_ccs: true,
            hang_commands: false,
            hung: None,
            next_slot: 1,
            ep0_response: Vec::new(),
            ep0_out: Vec::new(),
            ep0_trbs: Vec::new(),
            addressed: Vec::new(),
            evaluated_mps: Vec::new(),
            portsc: vec![0; 9],
            port_last: vec![0; 9],
            port_reset_ticks: vec![0; 9],
            ped_written: 0,
            ep0_dead: false,
            restart_after_stop: 0,
            bulk: BTreeMap::new(),
            configured: Vec::new(),
        };
        hc.w32(0x00, 0x20 | (0x0100 << 16));
        hc.w32(0x04, 64 | (16 << 8) | (8 << 24));
        hc.w32(0x08, (scratchpads & 0x1f) << 27 | (scratchpads >> 5) << 21);
        hc.w32(
            0x10,
            1 | (u32::from(csz64) << 2) | (((XECP / 4) as u32) << 16),
        );
        hc.w32(0x14, DB as u32);
        hc.w32(0x18, RT as u32);
        // Running (as a BIOS left it), CNR set.
        hc.w32(USBCMD, 1);
        hc.w32(USBSTS, 1 << 11);
        hc.w32(OP + 0x08, 1); // PAGESIZE 4 KiB
                              // USB Legacy Support: BIOS owned; Supported Protocol USB 3 ports 1-4, USB 2 ports 5-8.
        hc.w32(XECP, 1 | (4 << 8) | (1 << 16));
        hc.w32(XECP + 4, 1 | (1 << 4) | (1 << 13) | (1 << 29)); // SMI enables, one SMI event
        hc.w32(XECP + 0x10, 2 | (4 << 8) | (3 << 24));
        hc.w32(XECP + 0x14, 0x2042_5355);
        hc.w32(XECP + 0x18, 1 | (4 << 8));
        hc.w32(XECP + 0x20, 2 | (2 << 24));
        hc.w32(XECP + 0x24, 0x2042_5355);
        hc.w32(XECP + 0x28, 5 | (4 << 8));
        for p in 1..=8 {
            hc.portsc[p] = port::PP;
        }
        // Port 1: SuperSpeed device, enabled by link training. Port 5: high-speed device.
        hc.portsc[1] |= port::CCS | port::PED | (4 << 10) | port::CSC;
        hc.portsc[5] |= port::CCS | port::CSC | (7 << 5);
        for p in 1..=8 {
            hc.sync_port(p);
        }
        for i in 0..=64 {
            hc.w32(DB + 4 * i, DB_SENTINEL);
        }
        hc
    }

    fn sync_port(&mut self, p: usize) {
        self.w32(PORTS + 16 * (p - 1), self.portsc[p]);
        self.port_last[p] = self.portsc[p];
    }

    fn ctx_words(&self) -> u64 {
        if self.csz64 {
            16
        } else {
            8
        }
    }

    fn out_ctx(&self, slot: u8) -> u64 {
        let dcbaa = self.r64(DCBAAP);
        let lo = self.dma.read_u32(dcbaa + 8 * u64::from(slot));
        let hi = self.dma.read_u32(dcbaa + 8 * u64::from(slot) + 4);
        u64::from(lo) | (u64::from(hi) << 32)
    }

    fn ep_state(&self, slot: u8, dci: u8) -> u32 {
        let at = self.out_ctx(slot) + u64::from(dci) * self.ctx_words() * 4;
        self.dma.read_u32(at) & 7
    }

    fn set_ep_state(&self, slot: u8, dci: u8, state: u32) {
        let at = self.out_ctx(slot) + u64::from(dci) * self.ctx_words() * 4;
        let w = self.dma.read_u32(at);
        self.dma.write_u32(at, (w & !7) | state);
    }

    fn tick(&mut self) {
        // BIOS handoff.
        let leg = self.r32(XECP);
        if leg & (1 << 24) != 0 && leg & (1 << 16) != 0 {
            match &mut self.bios_release_after {
                Some(0) => {
                    self.w32(XECP, leg & !(1 << 16));
                    self.log.push("bios released".into());
                }
                Some(n) => *n -= 1,
                None => {}
            }
        }
        let mut sts = self.r32(USBSTS);
        let cmd = self.r32(USBCMD);
        if sts & (1 << 11) != 0 {
            if self.cnr_ticks == 0 {
                sts &= !(1 << 11);
            } else {
                self.cnr_ticks -= 1;
            }
        }
        if cmd & 2 != 0 {
            assert!(sts & 1 != 0, "HCRST while running");
            self.w32(USBCMD, 0);
            sts = 1 | (1 << 11);
            self.cnr_ticks = 1;
            self.log.push("reset".into());
        }
        if cmd & 1 == 0 && sts & 1 == 0 {
            sts |= 1;
            self.log.push("halted".into());
        }
        if cmd & 1 != 0 && sts & 1 != 0 && cmd & 2 == 0 && !self.log.is_empty() {
            // Start: record what software set up before R/S.
            let snap = InitSnapshot {
                erstsz: self.r32(ERSTSZ),
                erstba: self.r64(ERSTBA),
                erdp: self.r64(ERDP),
                crcr: self.r64(CRCR),
                dcbaap: self.r64(DCBAAP),
                config: self.r32(CONFIG),
                imod: self.r32(IMOD),
            };
            self.init = Some(snap);
            self.log.push("run".into());
            if snap.erstba != 0 {
                let fc = FakeController::new(self.dma.clone(), snap.erstba);
                self.fc = Some(fc);
                self.cmd_deq = snap.crcr & !0x3f;
                self.cmd_ccs = snap.crcr & 1 != 0;
                self.w64(CRCR, 0);
            }
            sts &= !1;
            for p in [1u8, 5] {
                self.fc.as_mut().unwrap().port_status_change(p).unwrap();
            }
        }
        self.w32(USBSTS, sts);
        if self.fc.is_none() {
            return;
        }
        let erdp = self.r64(ERDP);
        self.fc.as_mut().unwrap().write_erdp(erdp);
        self.ports();
        // Command Abort.
        if self.r64(CRCR) & 4 != 0 {
            if let Some(ptr) = self.hung.take() {
                let fc = self.fc.as_mut().unwrap();
                fc.post_event(events::command_completion(
                    ptr,
                    CompletionCode::CommandAborted,
                    0,
                ))
                .unwrap();
                self.cmd_deq = ptr + 16;
                fc.post_event(events::command_completion(
                    self.cmd_deq,
                    CompletionCode::CommandRingStopped,
                    0,
                ))
                .unwrap();
                self.log.push("abort".into());
            }
            self.w64(CRCR, 0);
        }
        // Doorbells: the driver's write replaces the sentinel.
        let db0 = self.r32(DB);
        if db0 != DB_SENTINEL {
            self.w32(DB, DB_SENTINEL);
            self.run_commands();
        }
        for slot in 1..=64u8 {
            let v = self.r32(DB + 4 * usize::from(slot));
            if v != DB_SENTINEL {
                self.w32(DB + 4 * usize::from(slot), DB_SENTINEL);
                self.run_ep(slot, v as u8);
            }
        }
        // The fake's doorbell register keeps only the last write per slot (real ones latch
        // every write), so concurrent EP0 and bulk doorbells of one slot can overwrite each
        // other: endpoints that are Running are also serviced on every tick.
        let slots: Vec<u8> = self.addressed.iter().map(|a| a.0).collect();
        for slot in slots {
            if self.fc.as_ref().unwrap().next_owned_trb(slot, 1).is_some()
                && self.ep_state(slot, 1) == 1
            {
                self.run_ep(slot, 1);
            }
        }
        let keys: Vec<(u8, u8)> = self.bulk.keys().copied().collect();
        for (slot, dci) in keys {
            self.run_bulk(slot, dci);
        }
    }

    fn ports(&mut self) {
        for p in 1..=8 {
            let m = self.r32(PORTS + 16 * (p - 1));
            if m != self.port_last[p] {
                // The driver wrote m.
                if m & port::PED != 0 {
                    self.ped_written += 1;
                    self.portsc[p] &= !port::PED;
                }
                self.portsc[p] &= !(m & port::CHANGE_BITS);
                if m & port::PR != 0 {
                    self.portsc[p] |= port::PR;
                    self.portsc[p] &= !port::PED;
                    self.port_reset_ticks[p] = 2;
                }
                self.sync_port(p);
            } else if self.port_reset_ticks[p] > 0 {
                self.port_reset_ticks[p] -= 1;
                if self.port_reset_ticks[p] == 0 {
                    self.portsc[p] &= !(port::PR | (0xf << 10) | port::PLS_MASK);
                    self.portsc[p] |= port::PED | port::PRC | (3 << 10);
                    self.sync_port(p);
                    self.fc
                        .as_mut()
                        .unwrap()
                        .port_status_change(p as u8)
                        .unwrap();
                }
            }
        }
    }

    fn run_commands(&mut self) {
        loop {
            let phys = self.cmd_deq;
            let raw = self.dma.read_trb(phys);
            if (raw[3] & 1 != 0) != self.cmd_ccs {
                return;
            }
            let trb = command::Allowed::try_from(raw).expect("valid command TRB");
            if let command::Allowed::Link(l) = trb {
                if l.toggle_cycle() {
                    self.cmd_ccs = !self.cmd_ccs;
                }
                self.cmd_deq = l.ring_segment_pointer();
                continue;
            }
            if self.hang_commands {
                self.hung = Some(phys);
                self.w64(CRCR, 8); // CRR
                return;
            }
            let mut slot = 0;
            let mut code = CompletionCode::Success;
            match trb {
                command::Allowed::EnableSlot(_) => {
                    slot = self.next_slot;
                    self.next_slot += 1;
                    self.log.push(std::format!("enable slot {slot}"));
                }
                command::Allowed::AddressDevice(a) => {
                    slot = a.slot_id();
                    let icx = a.input_context_pointer();
                    let n = self.ctx_words();
                    let w = |i: u64| self.dma.read_u32(icx + 4 * i);
                    assert_eq!(w(1), 3, "A0 | A1");
                    let speed = ((w(n) >> 20) & 0xf) as u8;
                    let root = ((w(n + 1) >> 16) & 0xff) as u8;
                    let mps = (w(2 * n + 1) >> 16) as u16;
                    let deq = u64::from(w(2 * n + 2)) | (u64::from(w(2 * n + 3)) << 32);
                    self.addressed.push((slot, root, speed, mps));
                    self.fc.as_mut().unwrap().add_endpoint(slot, 1, deq);
                    let out = self.out_ctx(slot);
                    assert_ne!(out, 0, "DCBAA entry set before Address Device");
                    self.dma.write_u32(out + 12, (2 << 27) | u32::from(slot));
                    self.set_ep_state(slot, 1, 1);
                    self.log.push(std::format!("address device {slot}"));
                }
                command::Allowed::EvaluateContext(e) => {
                    slot = e.slot_id();
                    let icx = e.input_context_pointer();
                    let n = self.ctx_words();
                    let mps = (self.dma.read_u32(icx + 4 * (2 * n + 1)) >> 16) as u16;
                    self.evaluated_mps.push(mps);
                }
                command::Allowed::ResetEndpoint(r) => {
                    slot = r.slot_id();
                    if self.ep_state(slot, r.endpoint_id()) == 2 {
                        self.set_ep_state(slot, r.endpoint_id(), 3);
                        self.log
                            .push(std::format!("reset endpoint {slot} {}", r.endpoint_id()));
                    } else {
                        // xHCI 4.6.8: only a Halted endpoint can be reset.
                        code = CompletionCode::ContextStateError;
                    }
                }
                command::Allowed::ConfigureEndpoint(c) => {
                    slot = c.slot_id();
                    let icx = c.input_context_pointer();
                    let n = self.ctx_words();
                    let w = |i: u64| self.dma.read_u32(icx + 4 * i);
                    let add = w(1);
                    let mut eps = Vec::new();
                    for dci in 2..32u8 {
                        if add & (1 << dci) == 0 {
                            continue;
                        }
                        let base = (1 + u64::from(dci)) * n;
                        let ep_type = (w(base + 1) >> 3) & 7;
                        let mps = w(base + 1) >> 16;
                        let interval = (w(base) >> 16) & 0xff;
                        let deq = u64::from(w(base + 2)) | (u64::from(w(base + 3)) << 32);
                        eps.push((dci, ep_type, mps, interval, deq));
                        self.fc.as_mut().unwrap().add_endpoint(slot, dci, deq);
                        self.set_ep_state(slot, dci, 1);
                        self.bulk.insert(
                            (slot, dci),
                            BulkEp {
                                // Bulk IN 6, Interrupt IN 7.
                                dir_in: ep_type >= 5,
                                ..BulkEp::default()
                            },
                        );
                    }
                    let entries = w(n) >> 27;
                    self.log.push(std::format!(
                        "configure endpoint {slot} {add:#x} entries {entries}"
                    ));
                    self.configured.push((slot, add, eps));
                }
                command::Allowed::SetTrDequeuePointer(s)
                    if !matches!(self.ep_state(s.slot_id(), s.endpoint_id()), 3 | 4) =>
                {
                    // xHCI 4.6.10: only a Stopped or Error endpoint.
                    slot = s.slot_id();
                    code = CompletionCode::ContextStateError;
                }
                command::Allowed::SetTrDequeuePointer(s) => {
                    slot = s.slot_id();
                    // By hand: the crate's getter drops the high dword (its setter is right).
                    let ptr = u64::from(raw[0] & !0xe) | (u64::from(raw[1]) << 32);
                    assert_eq!(ptr & 0xffff_fff0, s.new_tr_dequeue_pointer());
                    self.fc
                        .as_mut()
                        .unwrap()
                        .reset_endpoint(slot, s.endpoint_id(), ptr);
                    self.log
                        .push(std::format!("set tr dequeue {slot} {}", s.endpoint_id()));
                }
                command::Allowed::StopEndpoint(s) => {
                    slot = s.slot_id();
                    let dci = s.endpoint_id();
                    if self.ep_state(slot, dci) == 1 {
                        self.set_ep_state(slot, dci, 3);
                        self.log.push(std::format!("stop endpoint {slot} {dci}"));
                        // A Transfer Event for the TRB the endpoint stopped on (xHCI 4.6.9).
                        let fc = self.fc.as_mut().unwrap();
                        if let Some(at) = fc.next_owned_trb(slot, dci) {
                            let e = events::transfer(
                                at,
                                CompletionCode::StoppedLengthInvalid,
                                0,
                                dci,
                                slot,
                                false,
                            );
                            fc.post_event(e).unwrap();
                        }
                    } else {
                        code = CompletionCode::ContextStateError;
                    }
                    if code == CompletionCode::Success && self.restart_after_stop > 0 {
                        self.restart_after_stop -= 1;
                        self.set_ep_state(slot, dci, 1);
                        self.log.push(std::format!("restarted {slot} {dci}"));
                    }
                }
                command::Allowed::DisableSlot(d) => {
                    slot = d.slot_id();
                    self.fc.as_mut().unwrap().remove_slot(slot);
                    self.bulk.retain(|(s, _), _| *s != slot);
                    self.log.push(std::format!("disable slot {slot}"));
                }
                command::Allowed::Noop(_) => self.log.push("noop".into()),
                other => panic!("unexpected command {other:?}"),
            }
            self.fc
                .as_mut()
                .unwrap()
                .post_event(events::command_completion(phys, code, slot))
                .unwrap();
            self.cmd_deq += 16;
        }
    }

    fn run_ep(&mut self, slot: u8, target: u8) {
        if target != 1 {
            // A doorbell restarts a Stopped endpoint; a Halted one stays halted.
            if self.bulk.contains_key(&(slot, target)) && self.ep_state(slot, target) == 3 {
                self.set_ep_state(slot, target, 1);
            }
            self.run_bulk(slot, target);
            return;
        }
        if self.ep0_dead {
            return;
        }
        self.set_ep_state(slot, 1, 1);
        let fc = self.fc.as_mut().unwrap();
        let (dma, response, ep0_out, log) = (
            &self.dma,
            &self.ep0_response,
            &mut self.ep0_out,
            &mut self.log,
        );
        let done = fc.run_endpoint_with(slot, 1, 64, &mut |c| {
            if let Ok(transfer::Allowed::SetupStage(s)) = transfer::Allowed::try_from(c.raw) {
                log.push(std::format!(
                    "setup {:#04x} {} {} {:#x}",
                    s.request_type(),
                    s.request(),
                    s.value(),
                    s.index()
                ));
            }
            if let Ok(transfer::Allowed::DataStage(d)) = transfer::Allowed::try_from(c.raw) {
                let len = d.trb_transfer_length() as usize;
                let buf = d.data_buffer_pointer();
                if d.direction() == transfer::Direction::In {
                    for (i, chunk) in response[..len].chunks(4).enumerate() {
                        let mut w = [0u8; 4];
                        w[..chunk.len()].copy_from_slice(chunk);
                        dma.write_u32(buf + 4 * i as u64, u32::from_le_bytes(w));
                    }
                } else {
                    let mut out = Vec::new();
                    for i in 0..len.div_ceil(4) {
                        out.extend_from_slice(&dma.read_u32(buf + 4 * i as u64).to_le_bytes());
                    }
                    out.truncate(len);
                    ep0_out.push(out);
                }
            }
        });
        let halted = fc.is_halted(slot, 1);
        self.ep0_trbs.extend(done);
        if halted {
            self.set_ep_state(slot, 1, 2);
        }
    }
}

impl FakeHc {
    /// Runs a bulk/interrupt endpoint while it is Running: IN TDs each take one frame (short
    /// frames end with a Short Packet event on the TRB where the data ended), OUT TDs record
    /// their data.
    fn run_bulk(&mut self, slot: u8, dci: u8) {
        loop {
            if self.ep_state(slot, dci) != 1 {
                return;
            }
            let Some(ep) = self.bulk.get(&(slot, dci)) else {
                return;
            };
            if (ep.dir_in && ep.frames.is_empty()) || ep.nak {
                return;
            }
            let fc = self.fc.as_mut().unwrap();
            if !fc.has_event_room() {
                return;
            }
            let Some(td) = fc.take_td(slot, dci) else {
                return;
            };
            let ep = self.bulk.get_mut(&(slot, dci)).unwrap();
            ep.tds.push(td.clone());
            if ep.stall_after == Some(0) {
                ep.stall_after = None;
                fc.set_halted(slot, dci);
                let e =
                    events::transfer(td[0].phys, CompletionCode::StallError, 0, dci, slot, false);
                fc.post_event(e).unwrap();
                self.set_ep_state(slot, dci, 2);
                self.log.push(std::format!("stalled {slot} {dci}"));
                return;
            }
            if let Some(n) = ep.stall_after.as_mut() {
                *n -= 1;
            }
            let normals: Vec<transfer::Normal> = td
                .iter()
                .map(|c| match transfer::Allowed::try_from(c.raw).unwrap() {
                    transfer::Allowed::Normal(n) => n,
                    t => panic!("bulk TD with {t:?}"),
                })
                .collect();
            let last = td.last().unwrap().phys;
            if ep.dir_in {
                let frame = ep.frames.pop_front().unwrap();
                let total: usize = normals
                    .iter()
                    .map(|n| n.trb_transfer_length() as usize)
                    .sum();
                assert!(frame.len() <= total, "babble is not modelled");
                let mut off = 0;
                let mut event = None;
                for (c, n) in td.iter().zip(&normals) {
                    let len = n.trb_transfer_length() as usize;
                    let take = len.min(frame.len() - off);
                    let buf = n.data_buffer_pointer();
                    for (i, chunk) in frame[off..off + take].chunks(4).enumerate() {
                        let mut w = self.dma.read_u32(buf + 4 * i as u64).to_le_bytes();
                        w[..chunk.len()].copy_from_slice(chunk);
                        self.dma
                            .write_u32(buf + 4 * i as u64, u32::from_le_bytes(w));
                    }
                    off += take;
                    if take < len {
                        assert!(n.interrupt_on_short_packet(), "IN TRB without ISP");
                        event = Some(events::transfer(
                            c.phys,
                            CompletionCode::ShortPacket,
                            (len - take) as u32,
                            dci,
                            slot,
                            false,
                        ));
                        break;
                    }
                }
                let e = event.unwrap_or_else(|| {
                    assert!(normals.last().unwrap().interrupt_on_completion());
                    events::transfer(last, CompletionCode::Success, 0, dci, slot, false)
                });
                fc.post_event(e).unwrap();
            } else {
                let mut out = Vec::new();
                for n in &normals {
                    let len = n.trb_transfer_length() as usize;
                    let buf = n.data_buffer_pointer();
                    let mut bytes = Vec::new();
                    for i in 0..len.div_ceil(4) {
                        bytes.extend_from_slice(
                            &self.dma.read_u32(buf + 4 * i as u64).to_le_bytes(),
                        );
                    }
                    bytes.truncate(len);
                    out.extend(bytes);
                }
                ep.out.push(out);
                let e = events::transfer(last, CompletionCode::Success, 0, dci, slot, false);
                fc.post_event(e).unwrap();
            }
        }
    }
}

struct FakeOs {
    hc: Arc<Mutex<FakeHc>>,
    now: Arc<AtomicU64>,
}

impl Os for FakeOs {
    fn now_us(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
    fn delay_us(&self, us: u64) {
        self.now.fetch_add(us, Ordering::SeqCst);
        self.hc.lock().unwrap().tick();
    }
    fn wait_for_interrupt(&self, timeout_us: u64) {
        self.now.fetch_add(timeout_us.min(100), Ordering::SeqCst);
        self.hc.lock().unwrap().tick();
    }
    fn completion(&self) -> Arc<dyn Completion> {
        Arc::new(FakeCompletion {
            clock: self.now.clone(),
            done: Mutex::new(false),
            cv: Condvar::new(),
        })
    }
}

/// A completion on a std mutex + condvar (the kernel uses a semaphore).
struct FakeCompletion {
    /// The virtual clock: a wait that times out advances it, so a waiter always reaches its
    /// deadline even when nothing else runs.
    clock: Arc<AtomicU64>,
    done: Mutex<bool>,
    cv: Condvar,
}

impl Completion for FakeCompletion {
    fn signal(&self) {
        *self.done.lock().unwrap() = true;
        self.cv.notify_all();
    }
    fn wait(&self, timeout_us: u64) -> bool {
        // Real time, but at most 2 ms per call: the test clock is virtual.
        let t = std::time::Duration::from_micros(timeout_us.min(2000));
        let g = self.done.lock().unwrap();
        let (g, _) = self.cv.wait_timeout_while(g, t, |d| !*d).unwrap();
        if !*g {
            self.clock.fetch_add(timeout_us.min(2000), Ordering::SeqCst);
        }
        *g
    }
}

struct Rig {
    hc: Arc<Mutex<FakeHc>>,
    dma: FakeDma,
    ctl: Controller<FakeMapper>,
}

fn rig_with(csz64: bool, scratchpads: u32) -> Rig {
    let dma = FakeDma::new();
    let hc = FakeHc::new(dma.clone(), csz64, scratchpads);
    let mapper = FakeMapper {
        space: hc.space.clone(),
    };
    let hc = Arc::new(Mutex::new(hc));
    let os = Arc::new(FakeOs {
        hc: hc.clone(),
        now: Arc::new(AtomicU64::new(0)),
    });
    // SAFETY: the fake MMIO space is driven by this controller only.
    #[allow(unsafe_code)]
    let ctl = unsafe { Controller::new(MMIO_PHYS, mapper, Box::new(dma.clone()), os) }.unwrap();
    Rig { hc, dma, ctl }
}

fn rig() -> Rig {
    rig_with(false, 0)
}

fn addressed_hs(r: &mut Rig) -> u8 {
    assert_eq!(r.ctl.reset_port(5), Ok(Speed::High));
    r.ctl
        .address_device(Attachment {
            root_port: 5,
            route: 0,
            speed: Speed::High,
            tt: None,
        })
        .unwrap()
}

#[test]
fn init_sequence_and_info() {
    for (csz64, sp) in [(false, 0), (true, 2)] {
        let r = rig_with(csz64, sp);
        let hc = r.hc.lock().unwrap();
        let log = &hc.log;
        let pos = |s: &str| {
            log.iter()
                .position(|l| l == s)
                .unwrap_or_else(|| panic!("{s} in {log:?}"))
        };
        assert!(pos("bios released") < pos("halted"));
        assert!(pos("halted") < pos("reset"));
        assert!(pos("reset") < pos("run"));
        let snap = hc.init.unwrap();
        assert_eq!(snap.erstsz, 1, "ERSTSZ before R/S");
        assert_ne!(snap.erstba, 0, "ERSTBA before R/S");
        assert_eq!(
            snap.erdp & !0xf,
            hc.dma.read_u32(snap.erstba) as u64
                | (u64::from(hc.dma.read_u32(snap.erstba + 4)) << 32)
        );
        assert_eq!(snap.crcr & 1, 1, "RCS");
        assert_ne!(snap.crcr & !0x3f, 0);
        assert_ne!(snap.dcbaap, 0);
        assert_eq!(snap.dcbaap % 64, 0);
        assert_eq!(snap.config & 0xff, 64);
        assert_eq!(snap.imod & 0xffff, 1000);
        assert_eq!(hc.r32(IMAN) & 2, 2, "IMAN.IE");
        assert_eq!(hc.r32(USBCMD) & 0b101, 0b101, "INTE + R/S");
        let sp_array = u64::from(hc.dma.read_u32(snap.dcbaap))
            | (u64::from(hc.dma.read_u32(snap.dcbaap + 4)) << 32);
        if sp > 0 {
            assert_ne!(sp_array, 0, "DCBAA[0] = scratchpad array");
            for i in 0..u64::from(sp) {
                let b = hc.dma.read_u32(sp_array + 8 * i);
                assert_ne!(b, 0);
                assert_eq!(b % 4096, 0, "page-aligned scratchpad");
            }
        } else {
            assert_eq!(sp_array, 0);
        }
        drop(hc);
        let info = r.ctl.info();
        assert_eq!(info.version, 0x100);
        assert_eq!(info.max_slots, 64);
        assert_eq!(info.max_ports, 8);
        assert_eq!(info.scratchpads, sp);
        assert_eq!(info.context_size.bytes(), if csz64 { 64 } else { 32 });
        assert_eq!(info.bios_handoff, Some(HandoffResult::Released));
        assert_eq!(info.ports_of(3), vec![(1, 4)]);
        assert_eq!(info.ports_of(2), vec![(5, 8)]);
        let ctlsts = r.hc.lock().unwrap().r32(XECP + 4);
        assert_eq!(ctlsts & (1 | (1 << 4) | (7 << 13)), 0, "SMIs disabled");
        assert_eq!(ctlsts & (7 << 29), 7 << 29, "SMI events written 1 (RW1C)");
    }
}

#[test]
fn bios_that_never_lets_go_is_overridden() {
    let dma = FakeDma::new();
    let mut hc = FakeHc::new(dma.clone(), false, 0);
    hc.bios_release_after = None;
    let mapper = FakeMapper {
        space: hc.space.clone(),
    };
    let hc = Arc::new(Mutex::new(hc));
    let os = Arc::new(FakeOs {
        hc: hc.clone(),
        now: Arc::new(AtomicU64::new(0)),
    });
    // SAFETY: the fake MMIO space is driven by this controller only.
    #[allow(unsafe_code)]
    let ctl: Controller<FakeMapper> =
        unsafe { Controller::new(MMIO_PHYS, mapper, Box::new(dma), os.clone()) }.unwrap();
    assert_eq!(ctl.info().bios_handoff, Some(HandoffResult::Forced));
    assert!(os.now_us() >= 1_000_000);
    assert_eq!(hc.lock().unwrap().r32(XECP) & (1 << 16), 0);
}

#[test]
fn command_round_trip() {
    let r = rig();
    r.ctl.noop().unwrap();
    r.ctl.noop().unwrap();
    assert_eq!(r.ctl.counters().commands, 2);
    let log = r.hc.lock().unwrap().log.clone();
    assert_eq!(log.iter().filter(|l| *l == "noop").count(), 2);
}

#[test]
fn command_timeout_aborts_and_ring_keeps_working() {
    let r = rig();
    r.hc.lock().unwrap().hang_commands = true;
    assert_eq!(r.ctl.noop(), Err(TransferError::Timeout));
    assert!(r.hc.lock().unwrap().log.iter().any(|l| l == "abort"));
    assert!(!r.ctl.is_dead());
    assert_eq!(r.ctl.counters().command_timeouts, 1);
    r.hc.lock().unwrap().hang_commands = false;
    r.ctl.noop().unwrap();
    r.ctl.noop().unwrap();
}

#[test]
fn ports_reset_and_rw1c() {
    let r = rig();
    assert_eq!(r.ctl.port_count(), 8);
    let s1 = r.ctl.port_status(1);
    assert!(s1.connected && s1.enabled && s1.connect_changed);
    assert_eq!((s1.speed, s1.usb_major), (Some(Speed::Super), 3));
    let s5 = r.ctl.port_status(5);
    assert!(s5.connected && !s5.enabled);
    assert_eq!(s5.usb_major, 2);
    r.ctl.acknowledge_port_change(1);
    r.ctl.process_events();
    r.hc.lock().unwrap().tick();
    let s1 = r.ctl.port_status(1);
    assert!(
        !s1.connect_changed && s1.enabled,
        "CSC cleared, PED untouched"
    );
    assert_eq!(r.ctl.reset_port(1), Ok(Speed::Super));
    assert_eq!(r.ctl.reset_port(5), Ok(Speed::High));
    let s5 = r.ctl.port_status(5);
    assert!(s5.enabled);
    assert_eq!(r.ctl.portsc_raw(5) & port::PRC, 0, "PRC cleared");
    assert_eq!(r.hc.lock().unwrap().ped_written, 0, "never wrote 1 to PED");
    assert_eq!(r.ctl.reset_port(6), Err(TransferError::Disconnected));
    assert!(r.ctl.take_port_changes().contains(&5));
}

fn get_device_descriptor(len: u16) -> SetupPacket {
    SetupPacket::new(0x80, 6, 0x0100, 0, len)
}

#[test]
fn address_device_and_control_transfers() {
    for csz64 in [false, true] {
        let mut r = rig_with(csz64, 0);
        let slot = addressed_hs(&mut r);
        assert_eq!(slot, 1);
        assert_eq!(r.hc.lock().unwrap().addressed, vec![(1, 5, 3, 64)]);
        let desc: Vec<u8> = (0..18u8).map(|i| i.wrapping_mul(7)).collect();
        r.hc.lock().unwrap().ep0_response = desc.clone();
        let mut buf = [0u8; 18];
        let n = r
            .ctl
            .control_transfer(slot, get_device_descriptor(18), &mut buf, 100)
            .unwrap();
        assert_eq!(n, 18);
        assert_eq!(&buf[..], &desc[..]);
        // The TRBs as the controller saw them.
        let trbs = r.hc.lock().unwrap().ep0_trbs.clone();
        assert_eq!(trbs.len(), 3);
        match transfer::Allowed::try_from(trbs[0].raw).unwrap() {
            transfer::Allowed::SetupStage(s) => {
                assert_eq!(s.transfer_type(), transfer::TransferType::In);
                assert_eq!(
                    (s.request_type(), s.request(), s.value(), s.length()),
                    (0x80, 6, 0x100, 18)
                );
                assert_eq!(trbs[0].raw[3] & (1 << 6), 1 << 6, "IDT");
            }
            t => panic!("{t:?}"),
        }
        match transfer::Allowed::try_from(trbs[1].raw).unwrap() {
            transfer::Allowed::DataStage(d) => {
                assert_eq!(d.direction(), transfer::Direction::In);
                assert_eq!(d.trb_transfer_length(), 18);
                assert!(d.interrupt_on_short_packet());
            }
            t => panic!("{t:?}"),
        }
        match transfer::Allowed::try_from(trbs[2].raw).unwrap() {
            transfer::Allowed::StatusStage(s) => {
                assert!(!s.direction(), "status OUT after data IN");
                assert!(s.interrupt_on_completion());
            }
            t => panic!("{t:?}"),
        }
        // OUT with data, then no-data request.
        let mut out = [1u8, 2, 3, 4, 5];
        let n = r
            .ctl
            .control_transfer(slot, SetupPacket::new(0x21, 0x00, 0, 0, 5), &mut out, 100)
            .unwrap();
        assert_eq!(n, 5);
        assert_eq!(r.hc.lock().unwrap().ep0_out, vec![vec![1, 2, 3, 4, 5]]);
        let n = r
            .ctl
            .control_transfer(slot, SetupPacket::new(0, 9, 1, 0, 0), &mut [], 100)
            .unwrap();
        assert_eq!(n, 0);
        let last = *r.hc.lock().unwrap().ep0_trbs.last().unwrap();
        match transfer::Allowed::try_from(last.raw).unwrap() {
            transfer::Allowed::StatusStage(s) => assert!(s.direction(), "status IN without data"),
            t => panic!("{t:?}"),
        }
        r.ctl.set_ep0_max_packet(slot, 64).unwrap();
        assert_eq!(r.hc.lock().unwrap().evaluated_mps, vec![64]);
        assert_eq!(r.ctl.counters().transfers, 3);
    }
}

#[test]
fn ep0_stall_is_recovered() {
    let mut r = rig();
    let slot = addressed_hs(&mut r);
    r.hc.lock().unwrap().ep0_response = vec![0x12; 64];
    // Stall the data stage (the TRB after the setup stage).
    r.hc.lock()
        .unwrap()
        .fc
        .as_mut()
        .unwrap()
        .inject_stall(slot, 1, 1);
    let mut buf = [0u8; 10];
    let qualifier = SetupPacket::new(0x80, 6, 0x0600, 0, 10);
    assert_eq!(
        r.ctl.control_transfer(slot, qualifier, &mut buf, 100),
        Err(TransferError::Stall)
    );
    let log = r.hc.lock().unwrap().log.clone();
    let reset = log
        .iter()
        .position(|l| l == "reset endpoint 1 1")
        .expect("Reset Endpoint");
    let deq = log
        .iter()
        .position(|l| l == "set tr dequeue 1 1")
        .expect("Set TR Dequeue");
    assert!(reset < deq);
    assert_eq!(r.ctl.counters().stalls, 1);
    // EP0 works again, and many times (ring reuse across the recovery).
    for _ in 0..200 {
        let mut buf = [0u8; 18];
        assert_eq!(
            r.ctl
                .control_transfer(slot, get_device_descriptor(18), &mut buf, 100),
            Ok(18)
        );
        assert_eq!(buf, [0x12; 18]);
    }
}

#[test]
fn control_transfer_timeout_stops_endpoint() {
    let mut r = rig();
    let slot = addressed_hs(&mut r);
    r.hc.lock().unwrap().ep0_dead = true;
    let mut buf = [0u8; 8];
    assert_eq!(
        r.ctl
            .control_transfer(slot, get_device_descriptor(8), &mut buf, 5),
        Err(TransferError::Timeout)
    );
    let log = r.hc.lock().unwrap().log.clone();
    let stop = log
        .iter()
        .position(|l| l == "stop endpoint 1 1")
        .expect("Stop Endpoint");
    let deq = log
        .iter()
        .rposition(|l| l == "set tr dequeue 1 1")
        .expect("Set TR Dequeue");
    assert!(stop < deq);
    assert_eq!(r.ctl.counters().timeouts, 1);
    r.hc.lock().unwrap().ep0_dead = false;
    r.hc.lock().unwrap().ep0_response = vec![9; 8];
    assert_eq!(
        r.ctl
            .control_transfer(slot, get_device_descriptor(8), &mut buf, 100),
        Ok(8)
    );
    assert_eq!(buf, [9; 8]);
}

#[test]
fn release_device_frees_everything() {
    let mut r = rig();
    let before = r.dma.live_regions();
    let slot = addressed_hs(&mut r);
    assert!(r.dma.live_regions() > before);
    assert_eq!(r.ctl.device_count(), 1);
    r.ctl.release_device(slot).unwrap();
    assert_eq!(r.ctl.device_count(), 0);
    assert_eq!(
        r.dma.live_regions(),
        before,
        "rings, contexts and buffers freed"
    );
    let hc = r.hc.lock().unwrap();
    assert!(hc.log.iter().any(|l| l == "disable slot 1"));
    assert_eq!(hc.out_ctx(1), 0, "DCBAA entry cleared");
    drop(hc);
    assert!(
        matches!(
            r.ctl
                .control_transfer(slot, get_device_descriptor(8), &mut [0; 8], 10),
            Err(TransferError::Disconnected)
        ),
        "a released device's handle reports Disconnected"
    );
    // The slot can be enumerated again.
    let again = addressed_hs(&mut r);
    assert_eq!(again, 2);
}

// ---- Pipes: bulk/interrupt endpoints, stall semantics, timeouts, disconnect, threads ----

use crate::pipe::{EndpointConfig, Pipe, PipeKind, TransferBuffer, TransferHandle};

const BULK_IN: u8 = 0x82;
const BULK_OUT: u8 = 0x02;
const INTR_IN: u8 = 0x81;
/// DCIs of the usb-net endpoints.
const DCI_IN: u8 = 5;
const DCI_OUT: u8 = 4;

/// The usb-net ECM data + notification endpoints (FACTS.md), configured on a fresh device.
fn usb_net(r: &mut Rig) -> (u8, Pipe, Pipe, Pipe) {
    let slot = addressed_hs(r);
    let cfg = |address, kind, max_packet, interval| EndpointConfig {
        address,
        kind,
        max_packet,
        interval,
        max_burst: 0,
    };
    let pipes = r
        .ctl
        .configure_endpoints(
            slot,
            &[
                cfg(BULK_IN, PipeKind::Bulk, 64, 0),
                cfg(BULK_OUT, PipeKind::Bulk, 64, 0),
                cfg(INTR_IN, PipeKind::Interrupt, 16, 32),
            ],
        )
        .unwrap();
    let mut it = pipes.into_iter();
    let (a, b, c) = (it.next().unwrap(), it.next().unwrap(), it.next().unwrap());
    (slot, a, b, c)
}

fn frame(tag: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| tag.wrapping_add(i as u8)).collect()
}

fn push_frames(r: &Rig, slot: u8, frames: &[Vec<u8>]) {
    let mut hc = r.hc.lock().unwrap();
    let ep = hc.bulk.get_mut(&(slot, DCI_IN)).unwrap();
    ep.frames.extend(frames.iter().cloned());
}

fn submit_in(r: &Rig, pipe: &Pipe, len: usize) -> TransferHandle {
    let b = TransferBuffer::alloc(&r.dma, len).unwrap();
    pipe.submit(b).unwrap()
}

fn data_of(h: &TransferHandle, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    h.buffer().read(&mut v);
    v
}

fn log(r: &Rig) -> Vec<String> {
    r.hc.lock().unwrap().log.clone()
}

fn pos(log: &[String], s: &str) -> usize {
    log.iter()
        .position(|l| l == s)
        .unwrap_or_else(|| panic!("{s:?} not in {log:?}"))
}

#[test]
fn configure_endpoint_context() {
    let mut r = rig();
    let (slot, bin, bout, intr) = usb_net(&mut r);
    let hc = r.hc.lock().unwrap();
    let (s, add, eps) = hc.configured[0].clone();
    assert_eq!(s, slot);
    assert_eq!(add, 1 | (1 << 3) | (1 << 4) | (1 << 5), "A0 + DCI 3, 4, 5");
    assert!(hc.log.iter().any(|l| l.ends_with("entries 5")));
    // (DCI, type, max packet, interval): bulk IN 6, bulk OUT 2, interrupt IN 7; high speed
    // bInterval 32 -> 15 (clamped 16, minus 1).
    let shape: Vec<_> = eps.iter().map(|e| (e.0, e.1, e.2, e.3)).collect();
    assert_eq!(shape, vec![(3, 7, 16, 15), (4, 2, 64, 0), (5, 6, 64, 0)]);
    drop(hc);
    assert_eq!(
        (bin.address(), bout.address(), intr.address()),
        (0x82, 0x02, 0x81)
    );
    assert!(bin.is_in() && !bout.is_in());
    let listed: Vec<_> = r.ctl.pipes().iter().map(|p| (p.slot, p.address)).collect();
    assert_eq!(listed, vec![(1, 0), (1, 0x81), (1, 0x02), (1, 0x82)]);
    // Twice the same endpoint is refused.
    let again = r.ctl.configure_endpoints(
        slot,
        &[EndpointConfig {
            address: BULK_IN,
            kind: PipeKind::Bulk,
            max_packet: 64,
            interval: 0,
            max_burst: 0,
        }],
    );
    assert!(matches!(again, Err(TransferError::Controller(_))));
}

#[test]
fn bulk_in_four_queued_complete_in_order() {
    let mut r = rig();
    let (slot, bin, _, _) = usb_net(&mut r);
    let handles: Vec<_> = (0..4).map(|_| submit_in(&r, &bin, 2048)).collect();
    assert_eq!(bin.counters().submitted, 4);
    // Nothing arrives until the device has frames.
    r.ctl.process_events();
    assert!(handles.iter().all(|h| h.try_result().is_none()));
    // Lengths: short, a multiple of 64, a full Ethernet frame, a minimum one.
    let lens = [100, 192, 1514, 60];
    let frames: Vec<_> = lens
        .iter()
        .enumerate()
        .map(|(i, l)| frame(i as u8 * 40, *l))
        .collect();
    push_frames(&r, slot, &frames);
    for (i, h) in handles.iter().enumerate() {
        assert_eq!(h.wait(1_000_000), Ok(lens[i]), "transfer {i}");
        assert_eq!(data_of(h, lens[i]), frames[i]);
    }
    let c = bin.counters();
    assert_eq!((c.submitted, c.completed, c.errors, c.stalls), (4, 4, 0, 0));
    assert_eq!(c.bytes, lens.iter().sum::<usize>() as u64);
    assert_eq!(bin.in_flight_trbs(), 0);
    // Every TD: one TRB (2048 bytes in one 64 KiB window), ISP + IOC.
    let hc = r.hc.lock().unwrap();
    for td in &hc.bulk[&(slot, DCI_IN)].tds {
        assert_eq!(td.len(), 1);
        match transfer::Allowed::try_from(td[0].raw).unwrap() {
            transfer::Allowed::Normal(n) => {
                assert!(n.interrupt_on_short_packet() && n.interrupt_on_completion());
                assert!(!n.chain_bit());
                assert_eq!(n.trb_transfer_length(), 2048);
            }
            t => panic!("{t:?}"),
        }
    }
}

#[test]
fn ring_wraps_with_many_transfers() {
    let mut r = rig();
    let (slot, bin, _, _) = usb_net(&mut r);
    // 600 transfers through a 256-slot ring, 8 in flight at a time.
    let mut pending = VecDeque::new();
    for i in 0..600usize {
        if pending.len() == 8 {
            let (j, h): (usize, TransferHandle) = pending.pop_front().unwrap();
            let n = 60 + j % 64;
            assert_eq!(h.wait(1_000_000), Ok(n));
            assert_eq!(data_of(&h, n), frame(j as u8, n));
        }
        pending.push_back((i, submit_in(&r, &bin, 128)));
        push_frames(&r, slot, &[frame(i as u8, 60 + i % 64)]);
    }
    for (j, h) in pending {
        assert_eq!(h.wait(1_000_000), Ok(60 + j % 64));
    }
    assert_eq!(bin.counters().completed, 600);
}

#[test]
fn chained_trbs_across_64k_boundaries() {
    let mut r = rig();
    let (slot, bin, bout, _) = usb_net(&mut r);
    // 140 KiB crosses at least two 64 KiB boundaries wherever it lands.
    let len = 140 * 1024 + 7;
    let b = TransferBuffer::alloc(&r.dma, len).unwrap();
    let h = bin.submit(b.clone()).unwrap();
    let f = frame(3, len);
    push_frames(&r, slot, core::slice::from_ref(&f));
    assert_eq!(h.wait(1_000_000), Ok(len));
    assert_eq!(data_of(&h, len), f);
    let td = r.hc.lock().unwrap().bulk[&(slot, DCI_IN)].tds[0].clone();
    assert!(td.len() >= 3, "{} TRBs", td.len());
    let mut at = b.phys();
    let mut sent = 0usize;
    for (i, c) in td.iter().enumerate() {
        let n = match transfer::Allowed::try_from(c.raw).unwrap() {
            transfer::Allowed::Normal(n) => n,
            t => panic!("{t:?}"),
        };
        let last = i + 1 == td.len();
        let l = n.trb_transfer_length() as usize;
        assert_eq!(n.data_buffer_pointer(), at, "contiguous");
        assert_eq!(
            at / 65536,
            (at + l as u64 - 1) / 65536,
            "TRB {i} crosses 64 KiB"
        );
        assert_eq!(n.chain_bit(), !last);
        assert_eq!(n.interrupt_on_completion(), last);
        assert!(n.interrupt_on_short_packet());
        sent += l;
        let expect_td_size = if last {
            0
        } else {
            (len - sent).div_ceil(64).min(31)
        };
        assert_eq!(usize::from(n.td_size()), expect_td_size);
        at += l as u64;
    }
    assert_eq!(sent, len);

    // A short frame ending in the second TRB: the event names that TRB and the length adds
    // up across the chain; the next TD is unaffected.
    let h1 = bin.submit(b.clone()).unwrap();
    let h2 = submit_in(&r, &bin, 64);
    let first_trb = {
        let hc = r.hc.lock().unwrap();
        hc.bulk[&(slot, DCI_IN)].tds[0].clone()
    };
    let first_len = match transfer::Allowed::try_from(first_trb[0].raw).unwrap() {
        transfer::Allowed::Normal(n) => n.trb_transfer_length() as usize,
        _ => unreachable!(),
    };
    let short = first_len + 1000;
    push_frames(&r, slot, &[frame(9, short), frame(1, 10)]);
    assert_eq!(h1.wait(1_000_000), Ok(short));
    assert_eq!(data_of(&h1, short), frame(9, short));
    assert_eq!(h2.wait(1_000_000), Ok(10));

    // OUT across boundaries: the device sees exactly the bytes.
    let out = frame(77, 100_000);
    assert_eq!(bout.bulk_out(&out, 1_000_000), Ok(out.len()));
    assert_eq!(r.hc.lock().unwrap().bulk[&(slot, DCI_OUT)].out, vec![out]);
    // Zero-length OUT (ECM: after a frame that is a multiple of 64 bytes).
    assert_eq!(bout.bulk_out(&[], 1_000_000), Ok(0));
    assert_eq!(bin.in_flight_trbs() + bout.in_flight_trbs(), 0);
}

/// Checks that every handle completed exactly once and returns the results.
fn results(hs: &[TransferHandle]) -> Vec<Result<usize, TransferError>> {
    hs.iter()
        .map(|h| h.try_result().expect("completed"))
        .collect()
}

#[test]
fn stall_mid_queue_fails_back_once_and_resumes_in_order() {
    let mut r = rig();
    let (slot, bin, bout, _) = usb_net(&mut r);
    r.hc.lock()
        .unwrap()
        .bulk
        .get_mut(&(slot, DCI_IN))
        .unwrap()
        .stall_after = Some(1);
    let hs: Vec<_> = (0..4).map(|_| submit_in(&r, &bin, 512)).collect();
    let frames: Vec<_> = (0..6).map(|i| frame(i * 10, 50 + usize::from(i))).collect();
    push_frames(&r, slot, &frames[..4]);
    assert_eq!(hs[0].wait(1_000_000), Ok(50));
    assert_eq!(hs[1].wait(1_000_000), Err(TransferError::Stall));
    assert_eq!(
        results(&hs),
        vec![
            Ok(50),
            Err(TransferError::Stall),
            Err(TransferError::PipeHalted),
            Err(TransferError::PipeHalted)
        ]
    );
    assert!(bin.is_halted());
    // Refused until clear_halt; other pipes are not halted.
    let b = TransferBuffer::alloc(&r.dma, 512).unwrap();
    assert_eq!(bin.submit(b).unwrap_err(), TransferError::PipeHalted);
    assert_eq!(bout.bulk_out(&[1, 2, 3], 1_000_000), Ok(3));
    // Nothing completes twice: more events change nothing.
    r.ctl.process_events();
    assert_eq!(results(&hs)[0], Ok(50));
    let c = bin.counters();
    assert_eq!((c.submitted, c.completed, c.errors, c.stalls), (4, 4, 3, 1));

    bin.clear_halt().unwrap();
    assert!(!bin.is_halted());
    let l = log(&r);
    let reset = pos(&l, "reset endpoint 1 5");
    let deq = pos(&l, "set tr dequeue 1 5");
    let clear = pos(&l, "setup 0x02 1 0 0x82");
    assert!(reset < deq && deq < clear, "{l:?}");
    assert!(
        !l.contains(&"stop endpoint 1 5".into()),
        "halted: no Stop Endpoint"
    );
    assert!(!r
        .hc
        .lock()
        .unwrap()
        .fc
        .as_ref()
        .unwrap()
        .is_halted(slot, DCI_IN));

    // Resubmitted: the stalled frame and the ones behind it arrive, complete and in order.
    let hs: Vec<_> = (0..4).map(|_| submit_in(&r, &bin, 512)).collect();
    push_frames(&r, slot, &frames[4..]);
    for (i, h) in hs.iter().enumerate() {
        let f = &frames[i + 1];
        assert_eq!(h.wait(1_000_000), Ok(f.len()));
        assert_eq!(&data_of(h, f.len()), f);
    }
    assert_eq!(bin.counters().completed, 8);
    assert_eq!(r.ctl.counters().recoveries, 1);
}

/// A usb-net with `queued` bulk IN transfers, the first of which completes with an injected
/// stall: (slot, bulk IN pipe, the transfers).
fn stalled_bulk_in(r: &mut Rig, queued: usize) -> (u8, Pipe, Vec<TransferHandle>) {
    let (slot, bin, _, _) = usb_net(r);
    let hs: Vec<_> = (0..queued).map(|_| submit_in(r, &bin, 512)).collect();
    bin.inject_stall_on_next_completion();
    push_frames(r, slot, &[frame(1, 70)]);
    assert_eq!(hs[0].wait(1_000_000), Err(TransferError::Stall));
    (slot, bin, hs)
}

#[test]
fn injected_stall_takes_the_stop_endpoint_path() {
    let mut r = rig();
    let (slot, bin, hs) = stalled_bulk_in(&mut r, 3);
    assert_eq!(
        results(&hs),
        vec![
            Err(TransferError::Stall),
            Err(TransferError::PipeHalted),
            Err(TransferError::PipeHalted)
        ]
    );
    assert_eq!(bin.counters().stalls, 1);
    // The real endpoint never halted: it was stopped so it consumes nothing more.
    let frames: Vec<_> = (2..6).map(|i| frame(i * 3, 80 + usize::from(i))).collect();
    push_frames(&r, slot, &frames);
    r.ctl.process_events();
    r.hc.lock().unwrap().tick();
    r.ctl.process_events();
    assert!(!r
        .hc
        .lock()
        .unwrap()
        .fc
        .as_ref()
        .unwrap()
        .is_halted(slot, DCI_IN));
    assert_eq!(
        r.hc.lock().unwrap().bulk[&(slot, DCI_IN)].frames.len(),
        4,
        "stopped"
    );

    bin.clear_halt().unwrap();
    let l = log(&r);
    let stop = pos(&l, "stop endpoint 1 5");
    let deq = pos(&l, "set tr dequeue 1 5");
    let clear = pos(&l, "setup 0x02 1 0 0x82");
    assert!(stop < deq && deq < clear, "{l:?}");
    assert!(
        !l.contains(&"reset endpoint 1 5".into()),
        "not halted: no Reset Endpoint"
    );
    let hs: Vec<_> = (0..4).map(|_| submit_in(&r, &bin, 512)).collect();
    for (h, f) in hs.iter().zip(&frames) {
        assert_eq!(h.wait(1_000_000), Ok(f.len()));
        assert_eq!(&data_of(h, f.len()), f);
    }
    // Late events for the failed-back TDs matched nothing and were dropped.
    let c = bin.counters();
    assert_eq!((c.submitted, c.completed), (7, 7));
}

/// Bulk IN Running again before a clear, as after QEMU's device wake-up, and Running again
/// right after each of the next `stops` Stop Endpoint commands.
fn restarting(r: &Rig, slot: u8, stops: u32) {
    let mut hc = r.hc.lock().unwrap();
    hc.restart_after_stop = stops;
    hc.set_ep_state(slot, DCI_IN, 1);
}

/// QEMU restarts a stopped endpoint when its device has data: the clear stops it again and
/// sets the dequeue pointer, and the pipe goes on in order.
#[test]
fn endpoint_restarted_during_a_clear_is_stopped_again() {
    let mut r = rig();
    let (slot, bin, _) = stalled_bulk_in(&mut r, 3);
    restarting(&r, slot, 2);
    bin.clear_halt().unwrap();
    let l = log(&r);
    let stops = l.iter().filter(|e| *e == "stop endpoint 1 5").count();
    assert!(stops >= 3, "{l:?}");
    assert_eq!(r.hc.lock().unwrap().restart_after_stop, 0, "{l:?}");
    assert!(l.contains(&"set tr dequeue 1 5".into()), "{l:?}");
    let frames: Vec<_> = (2..6).map(|i| frame(i * 3, 80 + usize::from(i))).collect();
    push_frames(&r, slot, &frames);
    let hs: Vec<_> = (0..4).map(|_| submit_in(&r, &bin, 512)).collect();
    for (h, f) in hs.iter().zip(&frames) {
        assert_eq!(h.wait(1_000_000), Ok(f.len()));
        assert_eq!(&data_of(h, f.len()), f);
    }
}

/// An endpoint that keeps restarting: the clear gives up after a bounded number of tries
/// with the controller's error, instead of looping.
#[test]
fn endpoint_that_keeps_restarting_fails_the_clear() {
    let mut r = rig();
    let (slot, bin, _) = stalled_bulk_in(&mut r, 1);
    restarting(&r, slot, 100);
    assert!(matches!(
        bin.clear_halt(),
        Err(TransferError::Controller(_))
    ));
    let left = r.hc.lock().unwrap().restart_after_stop;
    assert!(left >= 100 - 5, "bounded: {} stops", 100 - left);
}

#[test]
fn wedged_pipe_holds_transfers_until_cleared_then_resumes() {
    let mut r = rig();
    let (slot, _, bout, _) = usb_net(&mut r);
    assert_eq!(bout.bulk_out(&[1; 10], 1_000_000), Ok(10));
    bout.inject_wedge();
    let held: Vec<_> = (2..5u8)
        .map(|i| {
            let b = bout.alloc_buffer(20).unwrap();
            b.write(&[i; 20]);
            bout.submit(b).unwrap()
        })
        .collect();
    r.ctl.process_events();
    r.hc.lock().unwrap().tick();
    r.ctl.process_events();
    assert!(
        held.iter().all(|h| h.poll_wait(2_000).is_none()),
        "held back"
    );
    bout.clear_halt().unwrap();
    assert!(results(&held)
        .iter()
        .all(|r| *r == Err(TransferError::PipeHalted)));
    // After the clear the pipe works again. (This fake services running endpoints on every
    // tick, doorbell or not, so it did see the held transfers; their completions were
    // swallowed. QEMU only looks at an OUT ring when its doorbell rings.)
    assert_eq!(bout.bulk_out(&[9; 30], 1_000_000), Ok(30));
    assert_eq!(
        r.hc.lock().unwrap().bulk[&(slot, DCI_OUT)].out.last(),
        Some(&vec![9; 30])
    );
    let c = bout.counters();
    assert_eq!((c.submitted, c.completed, c.errors), (5, 5, 3));
}

#[test]
fn wedged_in_pipe_swallows_completions_until_cleared() {
    let mut r = rig();
    let (slot, bin, _, _) = usb_net(&mut r);
    bin.inject_wedge();
    let held: Vec<_> = (0..2).map(|_| submit_in(&r, &bin, 512)).collect();
    push_frames(&r, slot, &[frame(1, 60), frame(2, 61)]);
    r.ctl.process_events();
    r.hc.lock().unwrap().tick();
    r.ctl.process_events();
    assert!(held.iter().all(|h| h.poll_wait(2_000).is_none()));
    bin.clear_halt().unwrap();
    assert!(results(&held)
        .iter()
        .all(|r| *r == Err(TransferError::PipeHalted)));
    let h = submit_in(&r, &bin, 512);
    push_frames(&r, slot, &[frame(3, 62)]);
    assert_eq!(h.wait(1_000_000), Ok(62));
    assert_eq!(data_of(&h, 62), frame(3, 62));
}

#[test]
fn timeout_cancels_one_pipe_only() {
    let mut r = rig();
    let (slot, bin, bout, _) = usb_net(&mut r);
    // Two INs wait for frames that never come.
    let a = submit_in(&r, &bin, 512);
    let a2 = submit_in(&r, &bin, 512);
    assert_eq!(bout.bulk_out(&[1; 10], 1_000_000), Ok(10));
    assert_eq!(a.wait(5_000), Err(TransferError::Timeout));
    assert_eq!(a2.try_result(), Some(Err(TransferError::PipeHalted)));
    let l = log(&r);
    let stop = pos(&l, "stop endpoint 1 5");
    let deq = pos(&l, "set tr dequeue 1 5");
    assert!(stop < deq);
    assert!(
        !l.iter()
            .any(|x| x.ends_with(" 1 4") && !x.starts_with("setup")),
        "{l:?}"
    );
    // The OUT pipe carries on while IN is halted.
    assert_eq!(bout.bulk_out(&[2; 20], 1_000_000), Ok(20));
    assert!(bin.is_halted());
    assert!(!bout.is_halted());
    assert_eq!(
        r.hc.lock().unwrap().bulk[&(slot, DCI_OUT)].out,
        vec![vec![1; 10], vec![2; 20]]
    );
    // Cleared (Stopped endpoint, ring already in place): CLEAR_FEATURE, then IN works again.
    bin.clear_halt().unwrap();
    let h = submit_in(&r, &bin, 512);
    push_frames(&r, slot, &[frame(5, 33)]);
    assert_eq!(h.wait(1_000_000), Ok(33));
    assert_eq!(data_of(&h, 33), frame(5, 33));
    let c = bin.counters();
    assert_eq!((c.submitted, c.completed, c.errors), (3, 3, 2));
    assert_eq!(bout.counters().errors, 0);
}

#[test]
fn poll_wait_does_not_cancel() {
    let mut r = rig();
    let (slot, bin, _, intr) = usb_net(&mut r);
    let h = submit_in(&r, &bin, 512);
    assert_eq!(h.poll_wait(2_000), None);
    assert!(!bin.is_halted());
    push_frames(&r, slot, &[frame(0, 8)]);
    assert_eq!(h.wait(1_000_000), Ok(8));
    // Interrupt IN: nothing queued on the fake -> timeout, pipe halted, cleared.
    let mut buf = [0u8; 16];
    assert_eq!(
        intr.interrupt_in(&mut buf, 3_000),
        Err(TransferError::Timeout)
    );
    assert!(intr.is_halted());
    intr.clear_halt().unwrap();
    assert!(pos(&log(&r), "setup 0x02 1 0 0x81") > 0);
}

#[test]
fn disconnect_completes_everything_and_frees_dma() {
    let mut r = rig();
    let before = r.dma.live_regions();
    let (slot, bin, bout, intr) = usb_net(&mut r);
    r.hc.lock()
        .unwrap()
        .bulk
        .get_mut(&(slot, DCI_OUT))
        .unwrap()
        .nak = true;
    let mut hs: Vec<_> = (0..3).map(|_| submit_in(&r, &bin, 1600)).collect();
    let b = TransferBuffer::alloc(&r.dma, 300).unwrap();
    b.write(&[7; 300]);
    hs.push(bout.submit(b).unwrap());
    hs.push(
        intr.submit(TransferBuffer::alloc(&r.dma, 16).unwrap())
            .unwrap(),
    );
    assert!(r.dma.live_regions() > before);
    r.ctl.device_gone(slot).unwrap();
    assert!(hs
        .iter()
        .all(|h| h.try_result() == Some(Err(TransferError::Disconnected))));
    assert_eq!(hs[0].wait(1000), Err(TransferError::Disconnected));
    assert!(log(&r).contains(&"disable slot 1".into()));
    let b = TransferBuffer::alloc(&r.dma, 8).unwrap();
    assert_eq!(bin.submit(b).unwrap_err(), TransferError::Disconnected);
    assert_eq!(bin.clear_halt(), Err(TransferError::Disconnected));
    assert_eq!(bin.counters().errors, 3);
    assert!(r.ctl.pipes().is_empty());
    assert_eq!(r.ctl.device_count(), 0);
    drop(hs);
    drop((bin, bout, intr));
    assert_eq!(
        r.dma.live_regions(),
        before,
        "rings, contexts and buffers freed"
    );
    // The port can be enumerated again.
    let (slot2, bin, _, _) = usb_net(&mut r);
    let h = submit_in(&r, &bin, 64);
    push_frames(&r, slot2, &[frame(4, 64)]);
    assert_eq!(h.wait(1_000_000), Ok(64));
}

#[test]
fn threads_on_different_pipes_and_ep0() {
    let mut r = rig();
    let (slot, bin, bout, _) = usb_net(&mut r);
    r.hc.lock().unwrap().ep0_response = (0..18).collect();
    let frames: Vec<_> = (0..100u8).map(|i| frame(i, 20 + usize::from(i))).collect();
    push_frames(&r, slot, &frames);
    let stop = Arc::new(AtomicU32::new(0));
    // The controller thread: waits for "interrupts" and drains the event ring.
    let events = {
        let ctl = r.ctl.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while stop.load(Ordering::SeqCst) == 0 {
                ctl.wait_for_events(100);
                std::thread::yield_now();
            }
        })
    };
    let rx = {
        let bin = bin.clone();
        let frames = frames.clone();
        std::thread::spawn(move || {
            // Four bulk INs stay queued (QEMU's usb-net holds one frame at a time).
            let mut queue = VecDeque::new();
            let mut submitted = 0;
            for f in &frames {
                while queue.len() < 4 && submitted < frames.len() {
                    queue.push_back(bin.submit(bin.alloc_buffer(256).unwrap()).unwrap());
                    submitted += 1;
                }
                let h = queue.pop_front().unwrap();
                assert_eq!(h.wait(10_000_000), Ok(f.len()));
                assert_eq!(&data_of(&h, f.len()), f);
            }
        })
    };
    let tx = {
        let bout = bout.clone();
        std::thread::spawn(move || {
            for i in 0..100u8 {
                assert_eq!(bout.bulk_out(&[i; 40], 10_000_000), Ok(40));
            }
        })
    };
    let ep0 = {
        let ctl = r.ctl.clone();
        std::thread::spawn(move || {
            for _ in 0..30 {
                let mut buf = [0u8; 18];
                let n = ctl
                    .control_transfer(slot, get_device_descriptor(18), &mut buf, 10_000)
                    .unwrap();
                assert_eq!(n, 18);
                assert_eq!(buf.to_vec(), (0..18).collect::<Vec<u8>>());
            }
        })
    };
    rx.join().unwrap();
    tx.join().unwrap();
    ep0.join().unwrap();
    stop.store(1, Ordering::SeqCst);
    events.join().unwrap();
    let out = r.hc.lock().unwrap().bulk[&(slot, DCI_OUT)].out.clone();
    assert_eq!(out, (0..100u8).map(|i| vec![i; 40]).collect::<Vec<_>>());
    assert_eq!(bin.counters().completed, 100);
    assert_eq!(bout.counters().completed, 100);
}
