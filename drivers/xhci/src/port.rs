//! Root ports: Supported Protocol capabilities (which ports are USB 2 / USB 3, Protocol Speed
//! IDs), BIOS handoff, and the PORTSC write rules.
//!
//! PORTSC is *read* through the `xhci` crate's `PortStatusAndControlRegister` for decoding, but
//! *written* as a raw dword: the crate's type is read-modify-write, and it has no way to write 0
//! to the RW1S Port Reset / Warm Port Reset bits after reading them as 1 (a write of the value
//! read back would start another reset), nor to the Link State Write Strobe semantics. The bit
//! positions below are xHCI 1.2 Table 5-27; `tests` checks them against the crate's decoding.

use crate::controller::{HandoffResult, Os, BIOS_HANDOFF_TIMEOUT_US};
use alloc::vec::Vec;
use tether_usb::speed::Speed;
use xhci::accessor::{single, Mapper};
use xhci::extended_capabilities::usb_legacy_support_capability::LegSup;
use xhci::extended_capabilities::xhci_supported_protocol::BitRate;
use xhci::extended_capabilities::XhciSupportedProtocol;

/// Current Connect Status (RO).
pub const CCS: u32 = 1 << 0;
/// Port Enabled/Disabled (RW1C: writing 1 *disables* the port).
pub const PED: u32 = 1 << 1;
/// Port Reset (RW1S).
pub const PR: u32 = 1 << 4;
/// Port Link State (RWS, written only with LWS).
pub const PLS_MASK: u32 = 0xf << 5;
/// Port Power (RWS).
pub const PP: u32 = 1 << 9;
/// Port Speed (RO).
pub const SPEED_SHIFT: u32 = 10;
/// Port Indicator Control (RWS).
pub const PIC_MASK: u32 = 3 << 14;
/// Link State Write Strobe (RW, must be 0 unless writing PLS).
pub const LWS: u32 = 1 << 16;
/// Connect Status Change (RW1C).
pub const CSC: u32 = 1 << 17;
/// Port Enabled/Disabled Change (RW1C).
pub const PEC: u32 = 1 << 18;
/// Warm Port Reset Change (RW1C).
pub const WRC: u32 = 1 << 19;
/// Over-current Change (RW1C).
pub const OCC: u32 = 1 << 20;
/// Port Reset Change (RW1C).
pub const PRC: u32 = 1 << 21;
/// Port Link State Change (RW1C).
pub const PLC: u32 = 1 << 22;
/// Port Config Error Change (RW1C).
pub const CEC: u32 = 1 << 23;
/// Wake on Connect/Disconnect/Over-current Enable (RWS).
pub const WAKE_MASK: u32 = 7 << 25;
/// Warm Port Reset (RW1S, USB 3 ports).
pub const WPR: u32 = 1 << 31;

/// USBLEGCTLSTS bits kept when disabling SMIs (Linux `XHCI_LEGACY_DISABLE_SMI`): everything
/// but the SMI enables (bits 0, 4, 13-15) and the RW1C event bits.
pub const LEGACY_CTLSTS_KEEP: u32 = (0x7 << 1) | (0xff << 5) | (0x7 << 17);
/// USBLEGCTLSTS RW1C SMI event bits 29-31 (written 1 to clear).
pub const LEGACY_CTLSTS_SMI_EVENTS: u32 = 0x7 << 29;

/// Every change bit (all RW1C).
pub const CHANGE_BITS: u32 = CSC | PEC | WRC | OCC | PRC | PLC | CEC;

/// The value to write back to leave a port exactly as it is: keeps the read/write-preserved
/// bits (PLS, PP, PIC, wake enables), writes 0 to every RW1C bit (PED and the change bits), to
/// the RW1S reset bits and to LWS. OR in the bits to act on.
pub fn neutral(portsc: u32) -> u32 {
    portsc & (PLS_MASK | PP | PIC_MASK | WAKE_MASK)
}

/// The Port Speed field (a Protocol Speed ID Value).
pub fn speed_field(portsc: u32) -> u8 {
    ((portsc >> SPEED_SHIFT) & 0xf) as u8
}

/// One Supported Protocol capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortProtocol {
    /// Major revision (2 or 3).
    pub major: u8,
    /// Minor revision (BCD, e.g. 0x00, 0x10, 0x20).
    pub minor: u8,
    /// First root port (1-based).
    pub first_port: u8,
    /// Number of ports.
    pub count: u8,
    /// Protocol Slot Type for Enable Slot.
    pub slot_type: u8,
    /// Protocol Speed IDs defined by the capability: (PSIV, speed). Empty: default mapping.
    pub psi: Vec<(u8, Speed)>,
}

impl PortProtocol {
    /// Reads a Supported Protocol capability.
    pub fn read<M: Mapper + Clone>(sp: &XhciSupportedProtocol<M>) -> Self {
        let h = sp.header.read_volatile();
        let major = h.major_revision();
        let mut psi = Vec::new();
        if let Some(psis) = &sp.psis {
            for i in 0..psis.len() {
                let p = psis.read_volatile_at(i);
                let bps = psi_bits_per_second(
                    p.protocol_speed_id_exponent(),
                    p.protocol_speed_id_mantissa(),
                );
                psi.push((p.protocol_speed_id_value(), speed_from_bitrate(major, bps)));
            }
        }
        Self {
            major,
            minor: h.minor_revision(),
            first_port: h.compatible_port_offset(),
            count: h.compatible_port_count(),
            slot_type: h.protocol_slot_type(),
            psi,
        }
    }

    /// Every port USB 2 (controllers without a Supported Protocol capability).
    pub fn fallback(ports: u8) -> Self {
        Self {
            major: 2,
            minor: 0,
            first_port: 1,
            count: ports,
            slot_type: 0,
            psi: Vec::new(),
        }
    }

    /// The port is in this capability's range.
    pub fn contains(&self, port: u8) -> bool {
        port >= self.first_port
            && u16::from(port) < u16::from(self.first_port) + u16::from(self.count)
    }

    /// Speed of a PORTSC Port Speed value: the capability's PSI table if it has one (falling
    /// back to the defaults for IDs it does not list), else the default mapping (xHCI 7.2.2.1.1:
    /// 1 full, 2 low, 3 high, 4 super, 5 super+).
    pub fn speed(&self, psiv: u8) -> Option<Speed> {
        self.psi
            .iter()
            .find(|(v, _)| *v == psiv)
            .map(|(_, s)| *s)
            .or_else(|| Speed::from_xhci_default_psiv(psiv))
    }
}

fn psi_bits_per_second(exp: BitRate, mantissa: u16) -> u64 {
    let m = u64::from(mantissa);
    match exp {
        BitRate::Bits => m,
        BitRate::Kb => m * 1_000,
        BitRate::Mb => m * 1_000_000,
        BitRate::Gb => m * 1_000_000_000,
    }
}

/// Speed class of a PSI bit rate.
pub fn speed_from_bitrate(major: u8, bps: u64) -> Speed {
    if major >= 3 {
        if bps <= 5_000_000_000 {
            Speed::Super
        } else {
            Speed::SuperPlus
        }
    } else if bps <= 1_500_000 {
        Speed::Low
    } else if bps <= 12_000_000 {
        Speed::Full
    } else {
        Speed::High
    }
}

/// BIOS/OS handoff through USBLEGSUP (xHCI 4.22.1): set HC OS Owned, wait for HC BIOS Owned to
/// clear, and after [`BIOS_HANDOFF_TIMEOUT_US`] take the controller anyway (clear BIOS Owned,
/// as Linux does).
pub fn bios_handoff<M: Mapper + Clone>(
    legsup: &mut single::ReadWrite<LegSup, M>,
    os: &dyn Os,
) -> HandoffResult {
    if !legsup.read_volatile().hc_bios_owned_semaphore() {
        legsup.update_volatile(|l| {
            l.set_hc_os_owned_semaphore();
        });
        return HandoffResult::NotOwned;
    }
    legsup.update_volatile(|l| {
        l.set_hc_os_owned_semaphore();
    });
    let deadline = os.now_us() + BIOS_HANDOFF_TIMEOUT_US;
    while os.now_us() < deadline {
        if !legsup.read_volatile().hc_bios_owned_semaphore() {
            return HandoffResult::Released;
        }
        os.delay_us(1000);
    }
    legsup.update_volatile(|l| {
        l.clear_hc_bios_owned_semaphore()
            .set_hc_os_owned_semaphore();
    });
    HandoffResult::Forced
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutral_never_writes_rw1c_or_rw1s() {
        let n = neutral(u32::MAX);
        for bit in [CCS, PED, PR, LWS, WPR, CHANGE_BITS] {
            assert_eq!(n & bit, 0, "{bit:#x}");
        }
        assert_eq!(n & PP, PP, "port power preserved");
        assert_eq!(neutral(PED | CSC | PRC), 0);
        assert_eq!(speed_field(3 << 10 | PED), 3);
    }

    #[test]
    fn speeds_from_protocols() {
        let mut p = PortProtocol::fallback(4);
        assert_eq!(p.speed(1), Some(Speed::Full));
        assert_eq!(p.speed(2), Some(Speed::Low));
        assert_eq!(p.speed(3), Some(Speed::High));
        assert_eq!(p.speed(4), Some(Speed::Super));
        assert_eq!(p.speed(5), Some(Speed::SuperPlus));
        assert_eq!(p.speed(0), None);
        assert!(p.contains(1) && p.contains(4) && !p.contains(5) && !p.contains(0));
        // A PSI table overrides the defaults for the IDs it lists.
        p.psi.push((1, speed_from_bitrate(2, 480_000_000)));
        assert_eq!(p.speed(1), Some(Speed::High));
        assert_eq!(speed_from_bitrate(2, 1_500_000), Speed::Low);
        assert_eq!(speed_from_bitrate(2, 12_000_000), Speed::Full);
        assert_eq!(speed_from_bitrate(3, 5_000_000_000), Speed::Super);
        assert_eq!(speed_from_bitrate(3, 10_000_000_000), Speed::SuperPlus);
        let last = PortProtocol {
            first_port: 250,
            count: 6,
            ..PortProtocol::fallback(0)
        };
        assert!(last.contains(255));
    }
}
