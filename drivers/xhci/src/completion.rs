//! Completion codes (xHCI 6.4.5, Table 6-90) mapped to named errors.

use core::fmt;
use xhci::ring::trb::event::CompletionCode;

/// What a successful completion means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// Success: everything transferred.
    Full,
    /// Short Packet: success, fewer bytes than asked for (length from the event's residual).
    Short,
}

/// How the framework must recover an endpoint after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Nothing: the endpoint keeps running (or the error is not about an endpoint).
    None,
    /// The endpoint is Halted: Reset Endpoint, Set TR Dequeue Pointer, and (except for a
    /// protocol stall on the default control endpoint) CLEAR_FEATURE(ENDPOINT_HALT).
    ResetEndpoint,
    /// The endpoint is in the Error state (TRB Error): Set TR Dequeue Pointer only.
    SetDequeue,
}

/// A named USB/xHCI error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsbError {
    /// Completion code 0: the controller never wrote a code.
    InvalidCode,
    /// Data Buffer Error (2): host over/underrun.
    DataBuffer,
    /// Babble Detected (3). Halts the endpoint.
    Babble,
    /// USB Transaction Error (4): no valid response after the retries. Halts the endpoint.
    TransactionError,
    /// TRB Error (5): bad TRB parameter. Puts the endpoint in the Error state.
    TrbError,
    /// Stall (6): the device answered STALL. Halts the endpoint.
    Stall,
    /// Resource Error (7).
    Resource,
    /// Bandwidth Error (8).
    Bandwidth,
    /// No Slots Available (9).
    NoSlots,
    /// Invalid Stream Type (10).
    InvalidStreamType,
    /// Slot Not Enabled (11).
    SlotNotEnabled,
    /// Endpoint Not Enabled (12).
    EndpointNotEnabled,
    /// Ring Underrun (14, isoch OUT).
    RingUnderrun,
    /// Ring Overrun (15, isoch IN).
    RingOverrun,
    /// VF Event Ring Full (16).
    VfEventRingFull,
    /// Parameter Error (17): a context parameter is invalid.
    Parameter,
    /// Bandwidth Overrun (18, isoch).
    BandwidthOverrun,
    /// Context State Error (19): command not allowed in the context's state.
    ContextState,
    /// No Ping Response (20).
    NoPingResponse,
    /// Event Ring Full (21).
    EventRingFull,
    /// Incompatible Device (22).
    IncompatibleDevice,
    /// Missed Service (23, isoch).
    MissedService,
    /// Command Ring Stopped (24).
    CommandRingStopped,
    /// Command Aborted (25).
    CommandAborted,
    /// Stopped (26): transfer terminated by Stop Endpoint.
    Stopped,
    /// Stopped - Length Invalid (27).
    StoppedLengthInvalid,
    /// Stopped - Short Packet (28).
    StoppedShortPacket,
    /// Max Exit Latency Too Large (29).
    MaxExitLatencyTooLarge,
    /// Isoch Buffer Overrun (31).
    IsochBufferOverrun,
    /// Event Lost (32).
    EventLost,
    /// Undefined Error (33).
    Undefined,
    /// Invalid Stream ID (34).
    InvalidStreamId,
    /// Secondary Bandwidth Error (35).
    SecondaryBandwidth,
    /// Split Transaction Error (36). Halts the endpoint.
    SplitTransaction,
    /// A reserved code (30, 37..=191).
    Reserved(u8),
    /// Vendor defined error (192..=223).
    VendorError(u8),
    /// Vendor defined info (224..=255).
    VendorInfo(u8),
    /// No completion within the caller's timeout (framework-generated).
    Timeout,
    /// The device went away (framework-generated).
    Disconnected,
    /// The pipe is halted; the transfer was not run (framework-generated).
    PipeHalted,
}

impl UsbError {
    /// What recovery the endpoint needs after this error.
    pub fn recovery(&self) -> Recovery {
        match self {
            // xHCI 4.10.2: these transition the endpoint to Halted.
            UsbError::Stall
            | UsbError::Babble
            | UsbError::TransactionError
            | UsbError::SplitTransaction => Recovery::ResetEndpoint,
            // xHCI 4.10.2.4 / 4.8.3: TRB Error moves the endpoint to the Error state.
            UsbError::TrbError => Recovery::SetDequeue,
            _ => Recovery::None,
        }
    }

    /// The endpoint is Halted (Reset Endpoint + Set TR Dequeue + CLEAR_FEATURE needed).
    pub fn halts_endpoint(&self) -> bool {
        self.recovery() == Recovery::ResetEndpoint
    }
}

/// Maps a completion code (as the `xhci` crate decodes it: `Err(raw)` for codes it does not
/// name) to success or a named error.
pub fn check(code: Result<CompletionCode, u8>) -> Result<Completed, UsbError> {
    use CompletionCode as C;
    let c = match code {
        Ok(c) => c,
        Err(raw) => return Err(unnamed(raw)),
    };
    Err(match c {
        C::Success => return Ok(Completed::Full),
        C::ShortPacket => return Ok(Completed::Short),
        C::Invalid => UsbError::InvalidCode,
        C::DataBufferError => UsbError::DataBuffer,
        C::BabbleDetectedError => UsbError::Babble,
        C::UsbTransactionError => UsbError::TransactionError,
        C::TrbError => UsbError::TrbError,
        C::StallError => UsbError::Stall,
        C::ResourceError => UsbError::Resource,
        C::BandwidthError => UsbError::Bandwidth,
        C::NoSlotsAvailableError => UsbError::NoSlots,
        C::InvalidStreamTypeError => UsbError::InvalidStreamType,
        C::SlotNotEnabledError => UsbError::SlotNotEnabled,
        C::EndpointNotEnabledError => UsbError::EndpointNotEnabled,
        C::RingUnderrun => UsbError::RingUnderrun,
        C::RingOverrun => UsbError::RingOverrun,
        C::VfEventRingFullError => UsbError::VfEventRingFull,
        C::ParameterError => UsbError::Parameter,
        C::BandwidthOverrunError => UsbError::BandwidthOverrun,
        C::ContextStateError => UsbError::ContextState,
        C::NoPingResponseError => UsbError::NoPingResponse,
        C::EventRingFullError => UsbError::EventRingFull,
        C::IncompatibleDeviceError => UsbError::IncompatibleDevice,
        C::MissedServiceError => UsbError::MissedService,
        C::CommandRingStopped => UsbError::CommandRingStopped,
        C::CommandAborted => UsbError::CommandAborted,
        C::Stopped => UsbError::Stopped,
        C::StoppedLengthInvalid => UsbError::StoppedLengthInvalid,
        C::StoppedShortPacket => UsbError::StoppedShortPacket,
        C::MaxExitLatencyTooLargeError => UsbError::MaxExitLatencyTooLarge,
        C::IsochBufferOverrun => UsbError::IsochBufferOverrun,
        C::EventLostError => UsbError::EventLost,
        C::UndefinedError => UsbError::Undefined,
        C::InvalidStreamIdError => UsbError::InvalidStreamId,
        C::SecondaryBandwidthError => UsbError::SecondaryBandwidth,
        C::SplitTransactionError => UsbError::SplitTransaction,
    })
}

/// Codes the `xhci` crate does not name (reserved and vendor ranges).
fn unnamed(raw: u8) -> UsbError {
    match raw {
        192..=223 => UsbError::VendorError(raw),
        224..=255 => UsbError::VendorInfo(raw),
        _ => UsbError::Reserved(raw),
    }
}

impl fmt::Display for UsbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            UsbError::InvalidCode => "no completion code written",
            UsbError::DataBuffer => "data buffer error (host overrun/underrun)",
            UsbError::Babble => "babble detected",
            UsbError::TransactionError => "USB transaction error",
            UsbError::TrbError => "TRB error",
            UsbError::Stall => "stall",
            UsbError::Resource => "controller out of resources",
            UsbError::Bandwidth => "not enough bandwidth",
            UsbError::NoSlots => "no device slots available",
            UsbError::InvalidStreamType => "invalid stream type",
            UsbError::SlotNotEnabled => "slot not enabled",
            UsbError::EndpointNotEnabled => "endpoint not enabled",
            UsbError::RingUnderrun => "isoch ring underrun",
            UsbError::RingOverrun => "isoch ring overrun",
            UsbError::VfEventRingFull => "VF event ring full",
            UsbError::Parameter => "context parameter error",
            UsbError::BandwidthOverrun => "bandwidth overrun",
            UsbError::ContextState => "context state error",
            UsbError::NoPingResponse => "no ping response",
            UsbError::EventRingFull => "event ring full",
            UsbError::IncompatibleDevice => "incompatible device",
            UsbError::MissedService => "missed service interval",
            UsbError::CommandRingStopped => "command ring stopped",
            UsbError::CommandAborted => "command aborted",
            UsbError::Stopped => "stopped",
            UsbError::StoppedLengthInvalid => "stopped (length invalid)",
            UsbError::StoppedShortPacket => "stopped (short packet)",
            UsbError::MaxExitLatencyTooLarge => "max exit latency too large",
            UsbError::IsochBufferOverrun => "isoch buffer overrun",
            UsbError::EventLost => "event lost",
            UsbError::Undefined => "undefined controller error",
            UsbError::InvalidStreamId => "invalid stream ID",
            UsbError::SecondaryBandwidth => "secondary bandwidth error",
            UsbError::SplitTransaction => "split transaction error",
            UsbError::Reserved(c) => return write!(f, "reserved completion code {c}"),
            UsbError::VendorError(c) => return write!(f, "vendor error code {c}"),
            UsbError::VendorInfo(c) => return write!(f, "vendor info code {c}"),
            UsbError::Timeout => "timed out",
            UsbError::Disconnected => "device disconnected",
            UsbError::PipeHalted => "pipe halted",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    fn code(raw: u8) -> Result<CompletionCode, u8> {
        // Decode the raw byte the same way an event does: through the xhci crate.
        let mut t = [0u32; 4];
        t[2] = u32::from(raw) << 24;
        t[3] = 33 << 10; // Command Completion Event type, for decoding only
        match crate::event::Event::decode(t) {
            crate::event::Event::CommandCompletion { code, .. } => code,
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn every_code_is_named() {
        assert_eq!(check(code(1)), Ok(Completed::Full));
        assert_eq!(check(code(13)), Ok(Completed::Short));
        let mut seen = std::collections::BTreeSet::new();
        for raw in 0..=255u8 {
            if raw == 1 || raw == 13 {
                continue;
            }
            let e = check(code(raw)).unwrap_err();
            assert!(!e.to_string().is_empty());
            match e {
                UsbError::Reserved(c) => assert!(c == 30 || (37..=191).contains(&c)),
                UsbError::VendorError(c) => assert!((192..=223).contains(&c)),
                UsbError::VendorInfo(c) => assert!(c >= 224),
                named => {
                    assert!(raw <= 36 && raw != 30, "{raw} -> {named:?}");
                    assert!(seen.insert(named.to_string()), "duplicate name for {raw}");
                }
            }
        }
        // 0..=36 minus Success, Short Packet and reserved 30.
        assert_eq!(seen.len(), 34);
    }

    #[test]
    fn halting_codes() {
        assert_eq!(check(code(6)).unwrap_err(), UsbError::Stall);
        for raw in [3, 4, 6, 36] {
            assert!(check(code(raw)).unwrap_err().halts_endpoint(), "{raw}");
        }
        assert_eq!(check(code(5)).unwrap_err().recovery(), Recovery::SetDequeue);
        for raw in [2, 7, 12, 21, 26, 27, 28, 33, 200] {
            assert_eq!(
                check(code(raw)).unwrap_err().recovery(),
                Recovery::None,
                "{raw}"
            );
        }
        assert!(!UsbError::Timeout.halts_endpoint());
        assert_eq!(UsbError::Stall.to_string(), "stall");
        assert_eq!(
            UsbError::VendorError(200).to_string(),
            "vendor error code 200"
        );
    }
}
