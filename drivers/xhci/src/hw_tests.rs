//! The [`Controller`] against a register-level fake: a 16 KiB MMIO space in host memory behind a
//! fake `Mapper`, and a `FakeHc` that plays the controller each time the driver waits (its
//! `Os::delay_us` / `wait_for_interrupt` call `tick`). Rings and events go through the
//! `FakeController` of `fake.rs`; commands, PORTSC and the legacy capability are played here.

use crate::controller::{Completion, Controller, HandoffResult, Os};
use crate::fake::{events, Consumed, FakeController, FakeDma};
use crate::port;
use std::boxed::Box;
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
            let code = CompletionCode::Success;
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
                    self.set_ep_state(slot, r.endpoint_id(), 3);
                    self.log
                        .push(std::format!("reset endpoint {slot} {}", r.endpoint_id()));
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
                    self.set_ep_state(slot, s.endpoint_id(), 3);
                    self.log.push(std::format!("stop endpoint {slot}"));
                }
                command::Allowed::DisableSlot(d) => {
                    slot = d.slot_id();
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
        assert_eq!(target, 1, "only EP0 here");
        if self.ep0_dead {
            return;
        }
        self.set_ep_state(slot, 1, 1);
        let fc = self.fc.as_mut().unwrap();
        let done = fc.run_endpoint(slot, 1, 64);
        let halted = fc.is_halted(slot, 1);
        for c in &done {
            if let Ok(transfer::Allowed::DataStage(d)) = transfer::Allowed::try_from(c.raw) {
                let len = d.trb_transfer_length() as usize;
                let buf = d.data_buffer_pointer();
                if d.direction() == transfer::Direction::In {
                    for (i, chunk) in self.ep0_response[..len].chunks(4).enumerate() {
                        let mut w = [0u8; 4];
                        w[..chunk.len()].copy_from_slice(chunk);
                        self.dma
                            .write_u32(buf + 4 * i as u64, u32::from_le_bytes(w));
                    }
                } else {
                    let mut out = Vec::new();
                    for i in 0..len.div_ceil(4) {
                        out.extend_from_slice(&self.dma.read_u32(buf + 4 * i as u64).to_le_bytes());
                    }
                    out.truncate(len);
                    self.ep0_out.push(out);
                }
            }
        }
        self.ep0_trbs.extend(done);
        if halted {
            self.set_ep_state(slot, 1, 2);
        }
    }
}

struct FakeOs {
    hc: Arc<Mutex<FakeHc>>,
    now: AtomicU64,
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
        Arc::new(FakeCompletion::default())
    }
}

/// A completion on a std mutex + condvar (the kernel uses a semaphore).
#[derive(Default)]
struct FakeCompletion {
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
        now: AtomicU64::new(0),
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
        now: AtomicU64::new(0),
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
        .position(|l| l == "stop endpoint 1")
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
    assert!(matches!(
        r.ctl
            .control_transfer(slot, get_device_descriptor(8), &mut [0; 8], 10),
        Err(TransferError::Controller(_))
    ));
    // The slot can be enumerated again.
    let again = addressed_hs(&mut r);
    assert_eq!(again, 2);
}
