//! Speeds and interval encoding.

use crate::descriptor::TransferType::*;
use crate::speed::*;

#[test]
fn ep0_defaults() {
    assert_eq!(Speed::Low.default_ep0_max_packet(), 8);
    assert_eq!(Speed::Full.default_ep0_max_packet(), 8);
    assert_eq!(Speed::High.default_ep0_max_packet(), 64);
    assert_eq!(Speed::Super.default_ep0_max_packet(), 512);
    assert_eq!(Speed::SuperPlus.default_ep0_max_packet(), 512);
    assert!(Speed::Full.ep0_needs_fixup() && !Speed::High.ep0_needs_fixup());
}

#[test]
fn ep0_validation() {
    assert_eq!(Speed::Low.ep0_max_packet(8), Some(8));
    assert_eq!(Speed::Low.ep0_max_packet(64), None);
    for v in [8u8, 16, 32, 64] {
        assert_eq!(Speed::Full.ep0_max_packet(v), Some(v as u16));
    }
    assert_eq!(Speed::Full.ep0_max_packet(12), None);
    assert_eq!(Speed::High.ep0_max_packet(64), Some(64));
    assert_eq!(Speed::High.ep0_max_packet(8), None);
    assert_eq!(Speed::Super.ep0_max_packet(9), Some(512));
    assert_eq!(Speed::Super.ep0_max_packet(64), None);
}

#[test]
fn psiv_mapping() {
    for s in [
        Speed::Low,
        Speed::Full,
        Speed::High,
        Speed::Super,
        Speed::SuperPlus,
    ] {
        assert_eq!(
            Speed::from_xhci_default_psiv(s.xhci_default_psiv()),
            Some(s)
        );
    }
    assert_eq!(Speed::from_xhci_default_psiv(0), None);
    assert_eq!(Speed::from_xhci_default_psiv(15), None);
    assert!(Speed::Low.needs_tt() && !Speed::High.needs_tt());
    assert!(Speed::SuperPlus.is_superspeed());
    assert_eq!(std::format!("{}", Speed::SuperPlus), "super+");
}

#[test]
fn fs_interrupt() {
    // 2^n * 125 us <= bInterval ms, clamped to 3..=10.
    assert_eq!(fs_interrupt_interval(0), 3);
    assert_eq!(fs_interrupt_interval(1), 3);
    assert_eq!(fs_interrupt_interval(2), 4);
    assert_eq!(fs_interrupt_interval(3), 4);
    assert_eq!(fs_interrupt_interval(8), 6);
    assert_eq!(fs_interrupt_interval(10), 6);
    assert_eq!(fs_interrupt_interval(32), 8);
    assert_eq!(fs_interrupt_interval(128), 10);
    assert_eq!(fs_interrupt_interval(255), 10);
    for b in 1..=255u8 {
        let us = interval_micros(fs_interrupt_interval(b));
        assert!(us <= b as u32 * 1000 || b == 0, "b={b}");
        assert!(us * 2 > b as u32 * 1000 || us == 128_000, "b={b}");
    }
}

#[test]
fn periodic_exponents() {
    assert_eq!(fs_isoch_interval(1), 3);
    assert_eq!(fs_isoch_interval(4), 6);
    assert_eq!(fs_isoch_interval(0), 3);
    assert_eq!(fs_isoch_interval(13), 15);
    assert_eq!(fs_isoch_interval(200), 15);
    assert_eq!(hs_periodic_interval(1), 0);
    assert_eq!(hs_periodic_interval(4), 3);
    assert_eq!(hs_periodic_interval(16), 15);
    assert_eq!(hs_periodic_interval(0), 0);
    assert_eq!(hs_periodic_interval(255), 15);
    assert_eq!(xhci_interval(Speed::High, Interrupt, 4), 3);
    assert_eq!(xhci_interval(Speed::Super, Isochronous, 1), 0);
    assert_eq!(xhci_interval(Speed::Low, Interrupt, 10), 6);
    assert_eq!(xhci_interval(Speed::Full, Isochronous, 1), 3);
    assert_eq!(xhci_interval(Speed::High, Bulk, 255), 0);
    assert_eq!(xhci_interval(Speed::High, Control, 4), 0);
    assert_eq!(interval_micros(0), 125);
    assert_eq!(interval_micros(3), 1000);
    assert_eq!(interval_micros(15), 4_096_000);
    assert_eq!(interval_micros(200), 4_096_000);
}
