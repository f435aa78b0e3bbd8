//! USB speeds, EP0 packet sizes and xHCI endpoint interval encoding.

use crate::descriptor::TransferType;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Speed {
    /// 1.5 Mbit/s
    Low,
    /// 12 Mbit/s
    Full,
    /// 480 Mbit/s
    High,
    /// 5 Gbit/s
    Super,
    /// 10 Gbit/s and up
    SuperPlus,
}

impl Speed {
    /// EP0 max packet size to program before the device descriptor is known.
    /// Low speed is always 8, high speed 64, SuperSpeed 512. Full-speed devices may
    /// use 8, 16, 32 or 64: start at 8 (every device can answer an 8-byte read) and
    /// fix it up with Evaluate Context after reading bMaxPacketSize0.
    pub fn default_ep0_max_packet(self) -> u16 {
        match self {
            Speed::Low | Speed::Full => 8,
            Speed::High => 64,
            Speed::Super | Speed::SuperPlus => 512,
        }
    }

    /// Whether bMaxPacketSize0 may need a fix-up after the first read.
    pub fn ep0_needs_fixup(self) -> bool {
        self == Speed::Full
    }

    /// EP0 max packet in bytes from bMaxPacketSize0, validated for this speed.
    pub fn ep0_max_packet(self, b_max_packet_size0: u8) -> Option<u16> {
        match (self, b_max_packet_size0) {
            (Speed::Low, 8) => Some(8),
            (Speed::Full, 8 | 16 | 32 | 64) => Some(b_max_packet_size0 as u16),
            (Speed::High, 64) => Some(64),
            (Speed::Super | Speed::SuperPlus, 9) => Some(512),
            _ => None,
        }
    }

    /// Speed from an xHCI PORTSC Port Speed value using the default Protocol Speed
    /// ID mapping (xHCI 7.2.2.1.1, valid when the Supported Protocol capability
    /// defines no PSI dwords).
    pub fn from_xhci_default_psiv(psiv: u8) -> Option<Speed> {
        match psiv {
            1 => Some(Speed::Full),
            2 => Some(Speed::Low),
            3 => Some(Speed::High),
            4 => Some(Speed::Super),
            5..=7 => Some(Speed::SuperPlus),
            _ => None,
        }
    }

    /// xHCI slot-context speed value for the default PSI mapping.
    pub fn xhci_default_psiv(self) -> u8 {
        match self {
            Speed::Full => 1,
            Speed::Low => 2,
            Speed::High => 3,
            Speed::Super => 4,
            Speed::SuperPlus => 5,
        }
    }

    pub fn is_superspeed(self) -> bool {
        matches!(self, Speed::Super | Speed::SuperPlus)
    }

    /// Low/full-speed devices behind a high-speed hub need a transaction translator.
    pub fn needs_tt(self) -> bool {
        matches!(self, Speed::Low | Speed::Full)
    }

    pub fn name(self) -> &'static str {
        match self {
            Speed::Low => "low",
            Speed::Full => "full",
            Speed::High => "high",
            Speed::Super => "super",
            Speed::SuperPlus => "super+",
        }
    }
}

impl core::fmt::Display for Speed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Floor of log2 for v >= 1.
fn log2(v: u32) -> u8 {
    (31 - v.leading_zeros()) as u8
}

/// Full/low-speed interrupt bInterval (1..=255 frames of 1 ms) to the xHCI
/// Interval field (period = 2^Interval x 125 us): the largest power of two not
/// above the requested period, clamped to 3..=10 (1 ms .. 128 ms). 0 counts as 1.
pub fn fs_interrupt_interval(b_interval: u8) -> u8 {
    let frames = b_interval.max(1) as u32;
    log2(frames * 8).clamp(3, 10)
}

/// Full-speed isochronous bInterval (1..=16, period 2^(b-1) frames) to xHCI
/// Interval, clamped to the field's maximum of 15 (4.096 s).
pub fn fs_isoch_interval(b_interval: u8) -> u8 {
    (b_interval.clamp(1, 16) - 1 + 3).min(15)
}

/// High-speed or SuperSpeed periodic bInterval (1..=16, period 2^(b-1)
/// microframes) to xHCI Interval.
pub fn hs_periodic_interval(b_interval: u8) -> u8 {
    b_interval.clamp(1, 16) - 1
}

/// xHCI endpoint-context Interval for an endpoint. Control and bulk endpoints get 0
/// (a high-speed bulk/control OUT bInterval is a NAK rate the xHCI ignores).
pub fn xhci_interval(speed: Speed, ty: TransferType, b_interval: u8) -> u8 {
    match (ty, speed) {
        (TransferType::Control | TransferType::Bulk, _) => 0,
        (TransferType::Interrupt, Speed::Low | Speed::Full) => fs_interrupt_interval(b_interval),
        (TransferType::Isochronous, Speed::Low | Speed::Full) => fs_isoch_interval(b_interval),
        (TransferType::Interrupt | TransferType::Isochronous, _) => {
            hs_periodic_interval(b_interval)
        }
    }
}

/// Period in microseconds of an xHCI Interval value.
pub fn interval_micros(xhci_interval: u8) -> u32 {
    125u32 << xhci_interval.min(15)
}
