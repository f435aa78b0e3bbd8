//! Input Contexts for Address Device and Configure Endpoint, in 32- or 64-byte form (HCCPARAMS1
//! CSZ), built with the `xhci` crate's context types and serialised into a [`DmaRegion`].

use crate::dma::{DmaError, DmaMemory, DmaRegion};
use alloc::boxed::Box;
use xhci::context::{
    EndpointHandler, EndpointType, Input32Byte, Input64Byte, InputHandler, SlotHandler,
    NUM_OF_ENDPOINT_CONTEXTS,
};

/// Context size (HCCPARAMS1.CSZ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextSize {
    /// CSZ = 0.
    Bytes32,
    /// CSZ = 1.
    Bytes64,
}

impl ContextSize {
    /// From the CSZ bit.
    pub fn from_csz(csz: bool) -> Self {
        if csz {
            Self::Bytes64
        } else {
            Self::Bytes32
        }
    }
    /// Bytes per context.
    pub fn bytes(self) -> usize {
        match self {
            Self::Bytes32 => 32,
            Self::Bytes64 => 64,
        }
    }
    /// Bytes of a whole Input Context (control + slot + 31 endpoints).
    pub fn input_context_bytes(self) -> usize {
        self.bytes() * (2 + NUM_OF_ENDPOINT_CONTEXTS)
    }
    /// Bytes of a whole (output) Device Context.
    pub fn device_context_bytes(self) -> usize {
        self.bytes() * (1 + NUM_OF_ENDPOINT_CONTEXTS)
    }
}

/// Port speed IDs (default Protocol Speed ID mapping, xHCI Table 7-13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speed {
    /// Full speed (PSIV 1).
    Full = 1,
    /// Low speed (2).
    Low = 2,
    /// High speed (3).
    High = 3,
    /// SuperSpeed (4).
    Super = 4,
    /// SuperSpeedPlus (5).
    SuperPlus = 5,
}

impl Speed {
    /// Default EP0 max packet size before the device descriptor is read.
    pub fn default_max_packet0(self) -> u16 {
        match self {
            Speed::Low => 8,
            Speed::Full | Speed::High => 64,
            Speed::Super | Speed::SuperPlus => 512,
        }
    }
}

/// Where a device sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotParams {
    /// Route string (hub ports below the root port, 4 bits per tier).
    pub route_string: u32,
    /// Device speed.
    pub speed: Speed,
    /// Root hub port number (1-based).
    pub root_port: u8,
    /// For a LS/FS device behind a HS hub: (hub slot ID, hub port, hub is multi-TT).
    pub transaction_translator: Option<(u8, u8, bool)>,
    /// The device is a hub with this many ports.
    pub hub_ports: Option<u8>,
    /// Interrupter for this device's events.
    pub interrupter: u16,
}

/// An endpoint to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointParams {
    /// bEndpointAddress (bit 7 = IN).
    pub address: u8,
    /// Kind.
    pub kind: EndpointKind,
    /// wMaxPacketSize bits 0-10.
    pub max_packet_size: u16,
    /// Max burst (SuperSpeed companion bMaxBurst, else 0).
    pub max_burst: u8,
    /// TR Dequeue Pointer | DCS (from `TransferRing::dequeue_pointer_for_reset`).
    pub ring: u64,
}

/// Endpoint transfer type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    /// Bulk.
    Bulk,
    /// Interrupt with the xHCI Interval value (see [`interrupt_interval`]).
    Interrupt {
        /// Endpoint Context Interval (period = 2^interval * 125 µs).
        interval: u8,
    },
}

/// Device Context Index of an endpoint address (EP0 = 1).
pub fn dci(address: u8) -> usize {
    let num = usize::from(address & 0x0f);
    if num == 0 {
        1
    } else {
        num * 2 + usize::from(address & 0x80 != 0)
    }
}

/// The Endpoint Context Interval for an interrupt endpoint's bInterval (xHCI 6.2.3.6):
/// HS/SS: bInterval - 1 (bInterval 1..=16 in 2^(n-1) microframes); LS/FS: bInterval is in
/// 1 ms frames, converted to the largest power-of-two microframes not above it (3..=10).
pub fn interrupt_interval(speed: Speed, b_interval: u8) -> u8 {
    match speed {
        Speed::High | Speed::Super | Speed::SuperPlus => b_interval.clamp(1, 16) - 1,
        Speed::Full | Speed::Low => {
            let uframes = u32::from(b_interval.max(1)) * 8;
            (31 - uframes.leading_zeros()).clamp(3, 10) as u8
        }
    }
}

/// An Input Context of either size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InputContext {
    /// 32-byte contexts.
    C32(Box<Input32Byte>),
    /// 64-byte contexts.
    C64(Box<Input64Byte>),
}

impl InputContext {
    /// An all-zero Input Context.
    pub fn new(size: ContextSize) -> Self {
        match size {
            ContextSize::Bytes32 => Self::C32(Box::new(Input32Byte::new_32byte())),
            ContextSize::Bytes64 => Self::C64(Box::new(Input64Byte::new_64byte())),
        }
    }

    /// Its context size.
    pub fn size(&self) -> ContextSize {
        match self {
            Self::C32(_) => ContextSize::Bytes32,
            Self::C64(_) => ContextSize::Bytes64,
        }
    }

    /// The `xhci` crate's handler.
    pub fn handler(&self) -> &dyn InputHandler {
        match self {
            Self::C32(c) => &**c,
            Self::C64(c) => &**c,
        }
    }

    /// The `xhci` crate's handler, mutable.
    pub fn handler_mut(&mut self) -> &mut dyn InputHandler {
        match self {
            Self::C32(c) => &mut **c,
            Self::C64(c) => &mut **c,
        }
    }

    /// Input Context for Address Device: A0 (slot) and A1 (EP0) set; slot context with route
    /// string, speed, root port, Context Entries = 1; EP0 Control, max packet `max_packet0`,
    /// error count 3, TR Dequeue Pointer + DCS from `ep0_ring`.
    pub fn address_device(
        size: ContextSize,
        slot: &SlotParams,
        max_packet0: u16,
        ep0_ring: u64,
    ) -> Self {
        let mut cx = Self::new(size);
        let h = cx.handler_mut();
        h.control_mut().set_add_context_flag(0);
        h.control_mut().set_add_context_flag(1);
        fill_slot(h.device_mut().slot_mut(), slot, 1);
        let ep0 = h.device_mut().endpoint_mut(1);
        ep0.set_endpoint_type(EndpointType::Control);
        ep0.set_max_packet_size(max_packet0);
        ep0.set_max_burst_size(0);
        ep0.set_error_count(3);
        set_ring(ep0, ep0_ring);
        ep0.set_average_trb_length(8);
        cx
    }

    /// Input Context for Evaluate Context fixing EP0's max packet size (A1 only).
    pub fn evaluate_ep0_max_packet(size: ContextSize, max_packet0: u16) -> Self {
        let mut cx = Self::new(size);
        let h = cx.handler_mut();
        h.control_mut().set_add_context_flag(1);
        h.device_mut()
            .endpoint_mut(1)
            .set_max_packet_size(max_packet0);
        cx
    }

    /// Input Context for Configure Endpoint: A0 plus one Add flag per endpoint; the slot
    /// context's Context Entries covers the highest DCI (at least 1);
    /// `configuration_value` goes in the Input Control Context.
    pub fn configure_endpoints(
        size: ContextSize,
        slot: &SlotParams,
        configuration_value: u8,
        endpoints: &[EndpointParams],
    ) -> Self {
        let mut cx = Self::new(size);
        let h = cx.handler_mut();
        h.control_mut().set_add_context_flag(0);
        h.control_mut().set_configuration_value(configuration_value);
        let mut entries = 1;
        for ep in endpoints {
            let d = dci(ep.address);
            assert!(d > 1, "EP0 is configured by Address Device");
            entries = entries.max(d);
            h.control_mut().set_add_context_flag(d);
            let in_dir = ep.address & 0x80 != 0;
            let e = h.device_mut().endpoint_mut(d);
            let mps = ep.max_packet_size & 0x7ff;
            e.set_max_packet_size(mps);
            e.set_max_burst_size(ep.max_burst);
            e.set_error_count(3);
            set_ring(e, ep.ring);
            match ep.kind {
                EndpointKind::Bulk => {
                    e.set_endpoint_type(if in_dir {
                        EndpointType::BulkIn
                    } else {
                        EndpointType::BulkOut
                    });
                    e.set_average_trb_length(mps.max(1));
                }
                EndpointKind::Interrupt { interval } => {
                    e.set_endpoint_type(if in_dir {
                        EndpointType::InterruptIn
                    } else {
                        EndpointType::InterruptOut
                    });
                    e.set_interval(interval);
                    let esit = u32::from(mps) * (u32::from(ep.max_burst) + 1);
                    e.set_max_endpoint_service_time_interval_payload_low(esit as u16);
                    e.set_max_endpoint_service_time_interval_payload_high((esit >> 16) as u8);
                    e.set_average_trb_length(mps.max(1));
                }
            }
        }
        fill_slot(h.device_mut().slot_mut(), slot, entries as u8);
        cx
    }

    /// All dwords in memory order: control, slot, endpoints 1..=31.
    pub fn for_each_word(&self, mut f: impl FnMut(usize, u32)) {
        let h = self.handler();
        let mut i = 0;
        let mut emit = |words: &[u32]| {
            for w in words {
                f(i, *w);
                i += 1;
            }
        };
        emit(h.control().as_ref());
        emit(h.device().slot().as_ref());
        for d in 1..=NUM_OF_ENDPOINT_CONTEXTS {
            emit(h.device().endpoint(d).as_ref());
        }
    }

    /// Writes the context into `region` (at least [`ContextSize::input_context_bytes`] long).
    pub fn write_to(&self, region: &DmaRegion) {
        assert!(region.len_bytes() >= self.size().input_context_bytes());
        self.for_each_word(|i, w| region.write(i, w));
    }

    /// Allocates a region (64-byte aligned, within one page) and writes the context into it.
    pub fn to_dma(&self, dma: &dyn DmaMemory) -> Result<DmaRegion, DmaError> {
        let r = dma.alloc(self.size().input_context_bytes(), 64, 4096)?;
        self.write_to(&r);
        Ok(r)
    }
}

fn set_ring(e: &mut dyn EndpointHandler, ring: u64) {
    e.set_tr_dequeue_pointer(ring & !0xf);
    if ring & 1 != 0 {
        e.set_dequeue_cycle_state();
    } else {
        e.clear_dequeue_cycle_state();
    }
}

fn fill_slot(s: &mut dyn SlotHandler, p: &SlotParams, entries: u8) {
    s.set_route_string(p.route_string);
    s.set_speed(p.speed as u8);
    s.set_root_hub_port_number(p.root_port);
    s.set_context_entries(entries);
    s.set_interrupter_target(p.interrupter);
    if let Some((hub_slot, hub_port, mtt)) = p.transaction_translator {
        s.set_parent_hub_slot_id(hub_slot);
        s.set_parent_port_number(hub_port);
        if mtt {
            s.set_multi_tt();
        }
    }
    if let Some(ports) = p.hub_ports {
        s.set_hub();
        s.set_number_of_ports(ports);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeDma;

    fn slot() -> SlotParams {
        SlotParams {
            route_string: 0x21,
            speed: Speed::Full,
            root_port: 5,
            transaction_translator: None,
            hub_ports: None,
            interrupter: 0,
        }
    }

    #[test]
    fn address_device_layout_both_sizes() {
        let dma = FakeDma::new();
        for size in [ContextSize::Bytes32, ContextSize::Bytes64] {
            let cx = InputContext::address_device(size, &slot(), 64, 0x1_2345_6780 | 1);
            let r = cx.to_dma(&dma).unwrap();
            let n = size.bytes() / 4;
            assert_eq!(r.read(0), 0, "drop flags");
            assert_eq!(r.read(1), 0b11, "add flags A0 A1");
            // Slot context (xHCI 6.2.2): route 0x21, speed 1 << 20, context entries 1 << 27.
            assert_eq!(r.read(n), 0x21 | (1 << 20) | (1 << 27));
            assert_eq!(r.read(n + 1), 5 << 16, "root hub port");
            // EP0 context (xHCI 6.2.3).
            let ep0 = 2 * n;
            assert_eq!(r.read(ep0 + 1), (3 << 1) | (4 << 3) | (64 << 16));
            assert_eq!(r.read(ep0 + 2), 0x2345_6781);
            assert_eq!(r.read(ep0 + 3), 1);
            assert_eq!(r.read(ep0 + 4), 8);
            // Everything beyond EP0 is zero.
            for i in 3 * n..r.len_words() {
                assert_eq!(r.read(i), 0, "word {i}");
            }
            assert_eq!(r.len_bytes(), 33 * size.bytes());
        }
    }

    #[test]
    fn configure_endpoint_layout() {
        let dma = FakeDma::new();
        let eps = [
            EndpointParams {
                address: 0x82,
                kind: EndpointKind::Bulk,
                max_packet_size: 64,
                max_burst: 0,
                ring: 0x1000 | 1,
            },
            EndpointParams {
                address: 0x02,
                kind: EndpointKind::Bulk,
                max_packet_size: 64,
                max_burst: 0,
                ring: 0x2000,
            },
            EndpointParams {
                address: 0x81,
                kind: EndpointKind::Interrupt {
                    interval: interrupt_interval(Speed::Full, 32),
                },
                max_packet_size: 16,
                max_burst: 0,
                ring: 0x3000 | 1,
            },
        ];
        for size in [ContextSize::Bytes32, ContextSize::Bytes64] {
            let cx = InputContext::configure_endpoints(size, &slot(), 1, &eps);
            let r = cx.to_dma(&dma).unwrap();
            let n = size.bytes() / 4;
            assert_eq!(
                r.read(1),
                1 | (1 << 5) | (1 << 4) | (1 << 3),
                "A0 + DCI 5,4,3"
            );
            assert_eq!(r.read(7) & 0xff, 1, "configuration value");
            assert_eq!(r.read(n) >> 27, 5, "context entries = highest DCI");
            let ep = |d: usize| (1 + d) * n;
            // DCI 5 = EP2 IN bulk (type 6), DCI 4 = EP2 OUT bulk (type 2), DCI 3 = EP1 IN int (7).
            assert_eq!((r.read(ep(5) + 1) >> 3) & 7, 6);
            assert_eq!(r.read(ep(5) + 2), 0x1001);
            assert_eq!((r.read(ep(4) + 1) >> 3) & 7, 2);
            assert_eq!(r.read(ep(4) + 2), 0x2000);
            assert_eq!((r.read(ep(3) + 1) >> 3) & 7, 7);
            assert_eq!((r.read(ep(3)) >> 16) & 0xff, 8, "32 ms = 2^8 * 125 us");
            assert_eq!(r.read(ep(3) + 4) >> 16, 16, "max ESIT payload");
            assert_eq!((r.read(ep(3) + 1) >> 1) & 3, 3, "CErr");
        }
    }

    #[test]
    fn dci_and_interval() {
        assert_eq!(dci(0), 1);
        assert_eq!(dci(0x01), 2);
        assert_eq!(dci(0x81), 3);
        assert_eq!(dci(0x8f), 31);
        assert_eq!(interrupt_interval(Speed::High, 4), 3);
        assert_eq!(interrupt_interval(Speed::Full, 1), 3);
        assert_eq!(interrupt_interval(Speed::Low, 10), 6);
        assert_eq!(interrupt_interval(Speed::Full, 255), 10);
        assert_eq!(interrupt_interval(Speed::Super, 0), 0);
    }

    #[test]
    fn hub_and_tt_fields() {
        let mut s = slot();
        s.transaction_translator = Some((3, 2, true));
        s.hub_ports = Some(4);
        s.speed = Speed::High;
        let cx = InputContext::address_device(ContextSize::Bytes32, &s, 64, 0x4000);
        let sl = cx.handler().device().slot();
        assert_eq!(sl.parent_hub_slot_id(), 3);
        assert_eq!(sl.parent_port_number(), 2);
        assert!(sl.multi_tt());
        assert!(sl.hub());
        assert_eq!(sl.number_of_ports(), 4);
        assert_eq!(sl.speed(), 3);
        let ev = InputContext::evaluate_ep0_max_packet(ContextSize::Bytes64, 8);
        assert_eq!(ev.handler().device().endpoint(1).max_packet_size(), 8);
        assert!(ev.handler().control().add_context_flag(1));
        assert!(!ev.handler().control().add_context_flag(0));
    }
}
