//! Deterministic fuzzing of the parsers: random and mutated bytes must never
//! panic, and parsing stays fast.

use super::*;
use crate::descriptor::*;
use crate::request::{HubDescriptor, PortStatus};
use std::time::{Duration, Instant};
use std::vec::Vec;

pub(super) struct XorShift(pub(super) u64);

impl XorShift {
    pub(super) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    pub(super) fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Bytes that look like descriptors often enough to go deep into the parser.
fn interesting_byte(r: &mut XorShift) -> u8 {
    const SPECIAL: &[u8] = &[
        0, 1, 2, 4, 5, 6, 7, 8, 9, 0x0B, 0x0D, 0x24, 0x25, 0x30, 0x80, 0x81, 0xFF,
    ];
    if r.below(2) == 0 {
        SPECIAL[r.below(SPECIAL.len())]
    } else {
        r.byte()
    }
}

fn fix_total(buf: &mut [u8], r: &mut XorShift) {
    // Usually make wTotalLength right so the walker is exercised past the header.
    if buf.len() >= 4 && r.below(4) != 0 {
        let n = buf.len() as u16;
        buf[2] = n as u8;
        buf[3] = (n >> 8) as u8;
    }
}

fn mutate(seed: &[u8], r: &mut XorShift) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + r.below(6) {
        match r.below(7) {
            0 if !b.is_empty() => {
                let i = r.below(b.len());
                b[i] = interesting_byte(r);
            }
            1 if !b.is_empty() => {
                let i = r.below(b.len());
                b[i] ^= 1 << r.below(8);
            }
            2 => {
                let i = r.below(b.len() + 1);
                b.insert(i, interesting_byte(r));
            }
            3 if !b.is_empty() => {
                let i = r.below(b.len());
                b.remove(i);
            }
            4 => {
                let n = r.below(b.len() + 1);
                b.truncate(n);
            }
            5 if b.len() > 4 => {
                // Duplicate a slice (repeats interfaces/endpoints).
                let s = r.below(b.len());
                let e = (s + 1 + r.below(20)).min(b.len());
                let chunk: Vec<u8> = b[s..e].to_vec();
                let at = r.below(b.len() + 1);
                for (k, v) in chunk.into_iter().enumerate() {
                    b.insert(at + k, v);
                }
            }
            _ => {}
        }
    }
    fix_total(&mut b, r);
    b
}

fn exercise(buf: &[u8]) {
    if let Ok(c) = Configuration::parse(buf) {
        // Walk the tree; every accessor must be panic-free.
        assert!(c.interfaces.len() <= MAX_INTERFACES);
        for (_, a) in c.alt_settings() {
            assert!(a.endpoints.len() <= MAX_ENDPOINTS);
            for e in &a.endpoints {
                let _ = (
                    e.dci(),
                    e.xhci_endpoint_type(),
                    e.xhci_max_burst(),
                    e.max_esit_payload(),
                );
                assert!(e.number() != 0);
            }
            let _ = (a.cdc_union(), a.cdc_ethernet(), a.cdc_header());
        }
    } else if let Err(e) = Configuration::parse(buf) {
        assert!(e.offset <= buf.len());
        let _ = std::format!("{e}");
    }
    let _ = Configuration::parse_other_speed(buf);
    let _ = DeviceDescriptor::parse(buf);
    let _ = DeviceDescriptor::parse_max_packet0(buf);
    let _ = DeviceQualifier::parse(buf);
    if let Ok(s) = parse_string(buf) {
        let _ = MacAddress::parse_from_string_descriptor(&s);
    }
    let _ = parse_language_ids(buf);
    let _ = HubDescriptor::parse(buf).map(|h| (h.port_removable(h.num_ports), h.power_switching()));
    let _ = PortStatus::parse(buf, buf.first().is_some_and(|b| b & 1 == 1))
        .map(|s| (s.speed(), s.changes_to_clear().count()));
    let n = DescriptorIter::new(buf).count();
    assert!(n <= buf.len() / 2 + 1);
}

#[test]
fn fuzz_random_bytes() {
    let mut r = XorShift(0x9E37_79B9_7F4A_7C15);
    let start = Instant::now();
    for _ in 0..20_000 {
        let len = r.below(300);
        let mut b: Vec<u8> = (0..len).map(|_| interesting_byte(&mut r)).collect();
        if b.len() >= 2 && r.below(2) == 0 {
            b[0] = 9;
            b[1] = 2;
        }
        fix_total(&mut b, &mut r);
        exercise(&b);
    }
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn fuzz_mutated_qemu_descriptors() {
    let mut r = XorShift(0x1234_5678_9ABC_DEF1);
    let seeds = [
        qemu_ecm_config(),
        qemu_rndis_config(),
        qemu_net_device().to_vec(),
        string_desc("525400123456"),
    ];
    let start = Instant::now();
    let mut parsed_ok = 0;
    for i in 0..40_000 {
        let seed = &seeds[i % seeds.len()];
        let mut b = mutate(seed, &mut r);
        // Sometimes stack mutations.
        if r.below(4) == 0 {
            b = mutate(&b, &mut r);
        }
        if Configuration::parse(&b).is_ok() {
            parsed_ok += 1;
        }
        exercise(&b);
    }
    // The mutator keeps many inputs valid, so the deep paths were exercised.
    assert!(parsed_ok > 1_000, "only {parsed_ok} mutated configs parsed");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn worst_case_sizes_are_fast() {
    // 64 KiB of 2-byte descriptors, and 64 KiB of interface descriptors.
    let mut tiny = std::vec![9u8, 2, 0, 0, 0, 1, 0, 0, 0];
    while tiny.len() + 2 <= 65535 {
        tiny.extend_from_slice(&[2, 0x42]);
    }
    fix_total(&mut tiny, &mut XorShift(1));
    let n = tiny.len() as u16;
    tiny[2] = n as u8;
    tiny[3] = (n >> 8) as u8;
    let start = Instant::now();
    let c = Configuration::parse(&tiny).unwrap();
    assert_eq!(c.extra.len(), (tiny.len() - 9) / 2);

    let mut alts = Vec::new();
    'outer: for i in 0..32u8 {
        for a in 0..=255u8 {
            if alts.len() + 9 + 9 > 65535 {
                break 'outer;
            }
            alts.extend_from_slice(&iface(i, a, 0, 0xFF, 0, 0));
        }
    }
    let c = Configuration::parse(&config(1, 32, &alts)).unwrap();
    assert_eq!(c.alt_settings().count(), alts.len() / 9);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
}
