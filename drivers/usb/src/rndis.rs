//! Remote NDIS (RNDIS) over USB: control messages, a host-side session state machine and
//! data-packet framing. Pure logic, no I/O; every byte from the device is untrusted.
//!
//! Wire format (all fields little-endian u32):
//! - Control messages go to the device with a CDC SEND_ENCAPSULATED_COMMAND control transfer
//!   (`SetupPacket::send_encapsulated_command`) and come back with GET_ENCAPSULATED_RESPONSE
//!   (`SetupPacket::get_encapsulated_response`, wLength [`RESPONSE_BUFFER_LEN`]).
//! - Data goes over the bulk pipes as REMOTE_NDIS_PACKET_MSGs ([`encode_packet`],
//!   [`decode_packets`]).
//!
//! Offsets follow the RNDIS specification: a QUERY/SET/QUERY_CMPLT InformationBufferOffset
//! counts from the RequestId field (byte 8), INDICATE_STATUS's StatusBufferOffset from the
//! Status field (byte 8), and every PACKET_MSG offset from the DataOffset field (byte 8).
//!
//! QEMU 7.2 `usb-net` (configuration value 2) specifics this module is written against:
//! INITIALIZE_CMPLT reports MaxPacketsPerTransfer 1 and MaxTransferSize 1580; an empty QUERY
//! must carry InformationBufferOffset 0 (offset 20 with length 0 makes QEMU stall EP0); with no
//! response queued GET_ENCAPSULATED_RESPONSE returns one zero byte ([`SessionEvent::NoResponse`]);
//! bytes after MessageLength in a bulk-OUT transfer poison QEMU's reassembly buffer, so a
//! transfer is never padded: [`transfer_needs_zlp`] says when to end it with a zero-length
//! packet instead.

use alloc::vec::Vec;
use core::fmt;

// ----- message types

pub const PACKET_MSG: u32 = 0x0000_0001;
pub const INITIALIZE_MSG: u32 = 0x0000_0002;
pub const HALT_MSG: u32 = 0x0000_0003;
pub const QUERY_MSG: u32 = 0x0000_0004;
pub const SET_MSG: u32 = 0x0000_0005;
pub const RESET_MSG: u32 = 0x0000_0006;
pub const INDICATE_STATUS_MSG: u32 = 0x0000_0007;
pub const KEEPALIVE_MSG: u32 = 0x0000_0008;
pub const INITIALIZE_CMPLT: u32 = 0x8000_0002;
pub const QUERY_CMPLT: u32 = 0x8000_0004;
pub const SET_CMPLT: u32 = 0x8000_0005;
pub const RESET_CMPLT: u32 = 0x8000_0006;
pub const KEEPALIVE_CMPLT: u32 = 0x8000_0008;

// ----- fixed header lengths

pub const INITIALIZE_LEN: usize = 24;
pub const HALT_LEN: usize = 12;
pub const QUERY_LEN: usize = 28;
pub const SET_LEN: usize = 28;
pub const RESET_LEN: usize = 12;
pub const KEEPALIVE_LEN: usize = 12;
pub const INITIALIZE_CMPLT_LEN: usize = 52;
pub const QUERY_CMPLT_LEN: usize = 24;
pub const SET_CMPLT_LEN: usize = 16;
pub const RESET_CMPLT_LEN: usize = 16;
pub const KEEPALIVE_CMPLT_LEN: usize = 16;
pub const INDICATE_STATUS_LEN: usize = 20;
/// REMOTE_NDIS_PACKET_MSG header: 11 u32 fields.
pub const PACKET_HEADER_LEN: usize = 44;
/// DataOffset of a frame placed right after the header (counted from the DataOffset field).
pub const PACKET_DATA_OFFSET: u32 = (PACKET_HEADER_LEN - 8) as u32;

/// Smallest Ethernet frame accepted from the device (a bare header).
pub const MIN_FRAME_LEN: usize = 14;
/// Largest Ethernet frame accepted from the device: 1514 plus a 802.1Q tag.
pub const MAX_FRAME_LEN: usize = 1514 + 4;

/// RNDIS protocol version the host speaks.
pub const MAJOR_VERSION: u32 = 1;
pub const MINOR_VERSION: u32 = 0;
/// Medium in INITIALIZE_CMPLT: 802.3.
pub const MEDIUM_802_3: u32 = 0;

/// wLength for GET_ENCAPSULATED_RESPONSE: room for any completion this module asks for.
pub const RESPONSE_BUFFER_LEN: u16 = 1024;
/// MaxTransferSize the host offers in INITIALIZE: one full frame plus header, as QEMU does.
pub const DEFAULT_HOST_MAX_TRANSFER: u32 = 1580;

// ----- status codes

pub const STATUS_SUCCESS: u32 = 0x0000_0000;
pub const STATUS_PENDING: u32 = 0x0000_0103;
pub const STATUS_MEDIA_CONNECT: u32 = 0x4001_000B;
pub const STATUS_MEDIA_DISCONNECT: u32 = 0x4001_000C;
pub const STATUS_FAILURE: u32 = 0xC000_0001;
pub const STATUS_RESOURCES: u32 = 0xC000_009A;
pub const STATUS_NOT_SUPPORTED: u32 = 0xC000_00BB;
pub const STATUS_ADAPTER_NOT_READY: u32 = 0xC001_0011;
pub const STATUS_INVALID_LENGTH: u32 = 0xC001_0014;
pub const STATUS_INVALID_DATA: u32 = 0xC001_0015;
pub const STATUS_BUFFER_TOO_SHORT: u32 = 0xC001_0016;
pub const STATUS_INVALID_OID: u32 = 0xC001_0017;

/// The name of an RNDIS/NDIS status code, or "unknown status".
pub fn status_name(status: u32) -> &'static str {
    match status {
        STATUS_SUCCESS => "RNDIS_STATUS_SUCCESS",
        STATUS_PENDING => "RNDIS_STATUS_PENDING",
        STATUS_MEDIA_CONNECT => "RNDIS_STATUS_MEDIA_CONNECT",
        STATUS_MEDIA_DISCONNECT => "RNDIS_STATUS_MEDIA_DISCONNECT",
        STATUS_FAILURE => "RNDIS_STATUS_FAILURE",
        STATUS_RESOURCES => "RNDIS_STATUS_RESOURCES",
        STATUS_NOT_SUPPORTED => "RNDIS_STATUS_NOT_SUPPORTED",
        STATUS_ADAPTER_NOT_READY => "RNDIS_STATUS_ADAPTER_NOT_READY",
        STATUS_INVALID_LENGTH => "RNDIS_STATUS_INVALID_LENGTH",
        STATUS_INVALID_DATA => "RNDIS_STATUS_INVALID_DATA",
        STATUS_BUFFER_TOO_SHORT => "RNDIS_STATUS_BUFFER_TOO_SHORT",
        STATUS_INVALID_OID => "RNDIS_STATUS_INVALID_OID",
        _ => "unknown status",
    }
}

// ----- OIDs

pub const OID_GEN_SUPPORTED_LIST: u32 = 0x0001_0101;
pub const OID_GEN_MAXIMUM_FRAME_SIZE: u32 = 0x0001_0106;
pub const OID_GEN_LINK_SPEED: u32 = 0x0001_0107;
pub const OID_GEN_CURRENT_PACKET_FILTER: u32 = 0x0001_010E;
pub const OID_GEN_MEDIA_CONNECT_STATUS: u32 = 0x0001_0114;
pub const OID_802_3_PERMANENT_ADDRESS: u32 = 0x0101_0101;
pub const OID_802_3_CURRENT_ADDRESS: u32 = 0x0101_0102;

/// The name of an OID this module knows, or "unknown OID".
pub fn oid_name(oid: u32) -> &'static str {
    match oid {
        OID_GEN_SUPPORTED_LIST => "OID_GEN_SUPPORTED_LIST",
        OID_GEN_MAXIMUM_FRAME_SIZE => "OID_GEN_MAXIMUM_FRAME_SIZE",
        OID_GEN_LINK_SPEED => "OID_GEN_LINK_SPEED",
        OID_GEN_CURRENT_PACKET_FILTER => "OID_GEN_CURRENT_PACKET_FILTER",
        OID_GEN_MEDIA_CONNECT_STATUS => "OID_GEN_MEDIA_CONNECT_STATUS",
        OID_802_3_PERMANENT_ADDRESS => "OID_802_3_PERMANENT_ADDRESS",
        OID_802_3_CURRENT_ADDRESS => "OID_802_3_CURRENT_ADDRESS",
        _ => "unknown OID",
    }
}

/// NDIS packet filter bits (OID_GEN_CURRENT_PACKET_FILTER).
pub const PACKET_TYPE_DIRECTED: u32 = 0x0000_0001;
pub const PACKET_TYPE_MULTICAST: u32 = 0x0000_0002;
pub const PACKET_TYPE_ALL_MULTICAST: u32 = 0x0000_0004;
pub const PACKET_TYPE_BROADCAST: u32 = 0x0000_0008;
pub const PACKET_TYPE_PROMISCUOUS: u32 = 0x0000_0020;
/// The filter the session sets: directed | multicast | broadcast.
pub const DEFAULT_PACKET_FILTER: u32 =
    PACKET_TYPE_DIRECTED | PACKET_TYPE_MULTICAST | PACKET_TYPE_BROADCAST;

/// OID_GEN_MEDIA_CONNECT_STATUS values.
pub const MEDIA_STATE_CONNECTED: u32 = 0;
pub const MEDIA_STATE_DISCONNECTED: u32 = 1;

/// The name of a message type, or "unknown message".
pub fn message_name(message_type: u32) -> &'static str {
    match message_type {
        PACKET_MSG => "REMOTE_NDIS_PACKET_MSG",
        INITIALIZE_MSG => "REMOTE_NDIS_INITIALIZE_MSG",
        HALT_MSG => "REMOTE_NDIS_HALT_MSG",
        QUERY_MSG => "REMOTE_NDIS_QUERY_MSG",
        SET_MSG => "REMOTE_NDIS_SET_MSG",
        RESET_MSG => "REMOTE_NDIS_RESET_MSG",
        INDICATE_STATUS_MSG => "REMOTE_NDIS_INDICATE_STATUS_MSG",
        KEEPALIVE_MSG => "REMOTE_NDIS_KEEPALIVE_MSG",
        INITIALIZE_CMPLT => "REMOTE_NDIS_INITIALIZE_CMPLT",
        QUERY_CMPLT => "REMOTE_NDIS_QUERY_CMPLT",
        SET_CMPLT => "REMOTE_NDIS_SET_CMPLT",
        RESET_CMPLT => "REMOTE_NDIS_RESET_CMPLT",
        KEEPALIVE_CMPLT => "REMOTE_NDIS_KEEPALIVE_CMPLT",
        _ => "unknown message",
    }
}

// ----- errors

/// A header field of an RNDIS message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    MessageType,
    MessageLength,
    RequestId,
    Status,
    MajorVersion,
    Medium,
    MaxTransferSize,
    PacketAlignmentFactor,
    InformationBufferOffset,
    InformationBufferLength,
    StatusBufferOffset,
    StatusBufferLength,
    DataOffset,
    DataLength,
    OobDataOffset,
    OobDataLength,
    PerPacketInfoOffset,
    PerPacketInfoLength,
    /// The MAC address in an OID_802_3_*_ADDRESS answer.
    MacAddress,
    /// The value in an OID_GEN_MAXIMUM_FRAME_SIZE answer.
    MaxFrameSize,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::MessageType => "MessageType",
            Field::MessageLength => "MessageLength",
            Field::RequestId => "RequestId",
            Field::Status => "Status",
            Field::MajorVersion => "MajorVersion",
            Field::Medium => "Medium",
            Field::MaxTransferSize => "MaxTransferSize",
            Field::PacketAlignmentFactor => "PacketAlignmentFactor",
            Field::InformationBufferOffset => "InformationBufferOffset",
            Field::InformationBufferLength => "InformationBufferLength",
            Field::StatusBufferOffset => "StatusBufferOffset",
            Field::StatusBufferLength => "StatusBufferLength",
            Field::DataOffset => "DataOffset",
            Field::DataLength => "DataLength",
            Field::OobDataOffset => "OOBDataOffset",
            Field::OobDataLength => "OOBDataLength",
            Field::PerPacketInfoOffset => "PerPacketInfoOffset",
            Field::PerPacketInfoLength => "PerPacketInfoLength",
            Field::MacAddress => "MAC address",
            Field::MaxFrameSize => "maximum frame size",
        }
    }
}

/// What a field should have held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expected {
    Equal(u64),
    AtLeast(u64),
    AtMost(u64),
    /// Inclusive range.
    Range(u64, u64),
    Text(&'static str),
}

impl fmt::Display for Expected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expected::Equal(v) => write!(f, "{v:#x}"),
            Expected::AtLeast(v) => write!(f, ">= {v}"),
            Expected::AtMost(v) => write!(f, "<= {v}"),
            Expected::Range(a, b) => write!(f, "{a}..={b}"),
            Expected::Text(t) => f.write_str(t),
        }
    }
}

/// Why an RNDIS message was refused or a session step could not run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RndisError {
    /// Fewer bytes than the message needs (`need` may come from the device's MessageLength).
    Truncated {
        message: &'static str,
        have: usize,
        need: u64,
    },
    /// A field holds a value the protocol (or this host) does not allow.
    BadField {
        message: &'static str,
        field: Field,
        expected: Expected,
        got: u64,
    },
    /// The device answered with a Status other than RNDIS_STATUS_SUCCESS.
    Status { message: &'static str, status: u32 },
    /// A session request while another waits for its completion, or in the wrong state.
    Busy {
        request: &'static str,
        state: SessionState,
    },
}

impl fmt::Display for RndisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            RndisError::Truncated {
                message,
                have,
                need,
            } => write!(f, "{message}: truncated, {have} bytes of {need}"),
            RndisError::BadField {
                message,
                field,
                expected,
                got,
            } => {
                if field == Field::MessageType {
                    write!(
                        f,
                        "{message}: MessageType {got:#x} ({}), expected {expected}",
                        message_name(got as u32)
                    )
                } else {
                    write!(
                        f,
                        "{message}: {} is {got} ({got:#x}), expected {expected}",
                        field.name()
                    )
                }
            }
            RndisError::Status { message, status } => write!(
                f,
                "{message}: Status {status:#010x} ({}), expected RNDIS_STATUS_SUCCESS",
                status_name(status)
            ),
            RndisError::Busy { request, state } => {
                write!(f, "{request}: not possible in session state {state:?}")
            }
        }
    }
}

/// Which [`RndisRxStats`] counter a receive error belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxErrorClass {
    BadLength,
    BadOffset,
    BadType,
    Truncated,
}

impl RndisError {
    pub fn rx_class(&self) -> RxErrorClass {
        match self {
            RndisError::Truncated { .. } => RxErrorClass::Truncated,
            RndisError::BadField { field, .. } => match field {
                Field::MessageType => RxErrorClass::BadType,
                Field::DataOffset
                | Field::OobDataOffset
                | Field::PerPacketInfoOffset
                | Field::InformationBufferOffset
                | Field::StatusBufferOffset => RxErrorClass::BadOffset,
                _ => RxErrorClass::BadLength,
            },
            RndisError::Status { .. } | RndisError::Busy { .. } => RxErrorClass::BadType,
        }
    }
}

// ----- little-endian helpers

fn rd(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn put(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

/// Reads a field known to lie inside `b` (the caller checked the header length).
fn field(b: &[u8], off: usize) -> u32 {
    rd(b, off).unwrap_or(0)
}

/// The MessageType of a control response, if at least 4 bytes arrived.
pub fn message_type(bytes: &[u8]) -> Option<u32> {
    rd(bytes, 0)
}

/// Checks MessageType and MessageLength (>= `header`, <= bytes received) and returns the
/// message cut to MessageLength.
fn check_header(bytes: &[u8], expected_type: u32, header: usize) -> Result<&[u8], RndisError> {
    let message = message_name(expected_type);
    if bytes.len() < 8 {
        return Err(RndisError::Truncated {
            message,
            have: bytes.len(),
            need: header as u64,
        });
    }
    let ty = field(bytes, 0);
    if ty != expected_type {
        return Err(RndisError::BadField {
            message,
            field: Field::MessageType,
            expected: Expected::Equal(u64::from(expected_type)),
            got: u64::from(ty),
        });
    }
    let len = field(bytes, 4) as usize;
    if len < header {
        return Err(RndisError::BadField {
            message,
            field: Field::MessageLength,
            expected: Expected::AtLeast(header as u64),
            got: len as u64,
        });
    }
    if len > bytes.len() {
        return Err(RndisError::Truncated {
            message,
            have: bytes.len(),
            need: len as u64,
        });
    }
    Ok(&bytes[..len])
}

fn check_request_id(message: &'static str, msg: &[u8], expected: u32) -> Result<(), RndisError> {
    let got = field(msg, 8);
    if got != expected {
        return Err(RndisError::BadField {
            message,
            field: Field::RequestId,
            expected: Expected::Equal(u64::from(expected)),
            got: u64::from(got),
        });
    }
    Ok(())
}

fn check_status(message: &'static str, status: u32) -> Result<(), RndisError> {
    if status != STATUS_SUCCESS {
        return Err(RndisError::Status { message, status });
    }
    Ok(())
}

/// A buffer described by (offset, length) where the offset counts from byte `base` of `msg`
/// and the buffer must not overlap the `header` bytes. An empty buffer is valid with any
/// offset (devices send 0).
fn sub_buffer<'a>(
    message: &'static str,
    msg: &'a [u8],
    base: usize,
    header: usize,
    (offset, length): (u32, u32),
    (offset_field, length_field): (Field, Field),
) -> Result<&'a [u8], RndisError> {
    if length == 0 {
        return Ok(&[]);
    }
    let start = base as u64 + u64::from(offset);
    if start < header as u64 || start > msg.len() as u64 {
        return Err(RndisError::BadField {
            message,
            field: offset_field,
            expected: Expected::Range((header - base) as u64, (msg.len() - base) as u64),
            got: u64::from(offset),
        });
    }
    let end = start + u64::from(length);
    if end > msg.len() as u64 {
        return Err(RndisError::BadField {
            message,
            field: length_field,
            expected: Expected::AtMost(msg.len() as u64 - start),
            got: u64::from(length),
        });
    }
    Ok(&msg[start as usize..end as usize])
}

// ----- control message builders

/// REMOTE_NDIS_INITIALIZE_MSG: version 1.0 and the largest message the host accepts.
pub fn initialize_msg(request_id: u32, max_transfer_size: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(INITIALIZE_LEN);
    put(&mut v, INITIALIZE_MSG);
    put(&mut v, INITIALIZE_LEN as u32);
    put(&mut v, request_id);
    put(&mut v, MAJOR_VERSION);
    put(&mut v, MINOR_VERSION);
    put(&mut v, max_transfer_size);
    v
}

/// REMOTE_NDIS_QUERY_MSG with an empty input buffer. InformationBufferOffset is 0: QEMU
/// stalls a query whose offset points at (not into) the end of the message.
pub fn query_msg(request_id: u32, oid: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(QUERY_LEN);
    put(&mut v, QUERY_MSG);
    put(&mut v, QUERY_LEN as u32);
    put(&mut v, request_id);
    put(&mut v, oid);
    put(&mut v, 0); // InformationBufferLength
    put(&mut v, 0); // InformationBufferOffset
    put(&mut v, 0); // DeviceVcHandle
    v
}

/// REMOTE_NDIS_SET_MSG carrying `value` right after the 28-byte header (offset 20 from
/// RequestId).
pub fn set_msg(request_id: u32, oid: u32, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(SET_LEN + value.len());
    put(&mut v, SET_MSG);
    put(&mut v, (SET_LEN + value.len()) as u32);
    put(&mut v, request_id);
    put(&mut v, oid);
    put(&mut v, value.len() as u32);
    put(
        &mut v,
        if value.is_empty() {
            0
        } else {
            (SET_LEN - 8) as u32
        },
    );
    put(&mut v, 0); // DeviceVcHandle
    v.extend_from_slice(value);
    v
}

/// SET OID_GEN_CURRENT_PACKET_FILTER.
pub fn set_packet_filter_msg(request_id: u32, filter: u32) -> Vec<u8> {
    set_msg(
        request_id,
        OID_GEN_CURRENT_PACKET_FILTER,
        &filter.to_le_bytes(),
    )
}

/// REMOTE_NDIS_KEEPALIVE_MSG from the host.
pub fn keepalive_msg(request_id: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(KEEPALIVE_LEN);
    put(&mut v, KEEPALIVE_MSG);
    put(&mut v, KEEPALIVE_LEN as u32);
    put(&mut v, request_id);
    v
}

/// REMOTE_NDIS_KEEPALIVE_CMPLT: the host's answer to a device-sent KEEPALIVE_MSG.
pub fn keepalive_cmplt(request_id: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(KEEPALIVE_CMPLT_LEN);
    put(&mut v, KEEPALIVE_CMPLT);
    put(&mut v, KEEPALIVE_CMPLT_LEN as u32);
    put(&mut v, request_id);
    put(&mut v, STATUS_SUCCESS);
    v
}

/// REMOTE_NDIS_RESET_MSG (Reserved = 0; the completion carries no RequestId).
pub fn reset_msg() -> Vec<u8> {
    let mut v = Vec::with_capacity(RESET_LEN);
    put(&mut v, RESET_MSG);
    put(&mut v, RESET_LEN as u32);
    put(&mut v, 0);
    v
}

/// REMOTE_NDIS_HALT_MSG (no completion follows).
pub fn halt_msg(request_id: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(HALT_LEN);
    put(&mut v, HALT_MSG);
    put(&mut v, HALT_LEN as u32);
    put(&mut v, request_id);
    v
}

// ----- completion parsers

/// REMOTE_NDIS_INITIALIZE_CMPLT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitComplete {
    pub major_version: u32,
    pub minor_version: u32,
    pub device_flags: u32,
    pub medium: u32,
    /// How many PACKET_MSGs the device accepts in one bulk-OUT transfer (0 read as 1).
    pub max_packets_per_transfer: u32,
    /// The largest bulk-OUT transfer the device accepts, headers included.
    pub max_transfer_size: u32,
    /// Each PACKET_MSG in a multi-packet transfer starts at a multiple of 2^this.
    pub packet_alignment_factor: u32,
}

/// Parses INITIALIZE_CMPLT: header, RequestId, Status, major version 1, medium 802.3, a
/// MaxTransferSize that holds at least a header and a minimal frame, alignment factor <= 7.
pub fn parse_initialize_cmplt(bytes: &[u8], request_id: u32) -> Result<InitComplete, RndisError> {
    let message = message_name(INITIALIZE_CMPLT);
    let m = check_header(bytes, INITIALIZE_CMPLT, INITIALIZE_CMPLT_LEN)?;
    check_request_id(message, m, request_id)?;
    check_status(message, field(m, 12))?;
    let ic = InitComplete {
        major_version: field(m, 16),
        minor_version: field(m, 20),
        device_flags: field(m, 24),
        medium: field(m, 28),
        max_packets_per_transfer: field(m, 32).max(1),
        max_transfer_size: field(m, 36),
        packet_alignment_factor: field(m, 40),
    };
    let bad = |field, expected, got: u32| RndisError::BadField {
        message,
        field,
        expected,
        got: u64::from(got),
    };
    if ic.major_version != MAJOR_VERSION {
        return Err(bad(
            Field::MajorVersion,
            Expected::Equal(u64::from(MAJOR_VERSION)),
            ic.major_version,
        ));
    }
    if ic.medium != MEDIUM_802_3 {
        return Err(bad(
            Field::Medium,
            Expected::Equal(u64::from(MEDIUM_802_3)),
            ic.medium,
        ));
    }
    let min_transfer = (PACKET_HEADER_LEN + 60) as u32;
    if ic.max_transfer_size < min_transfer {
        return Err(bad(
            Field::MaxTransferSize,
            Expected::AtLeast(u64::from(min_transfer)),
            ic.max_transfer_size,
        ));
    }
    if ic.packet_alignment_factor > 7 {
        return Err(bad(
            Field::PacketAlignmentFactor,
            Expected::AtMost(7),
            ic.packet_alignment_factor,
        ));
    }
    Ok(ic)
}

/// Parses QUERY_CMPLT and returns its information buffer.
pub fn parse_query_cmplt(bytes: &[u8], request_id: u32) -> Result<&[u8], RndisError> {
    let message = message_name(QUERY_CMPLT);
    let m = check_header(bytes, QUERY_CMPLT, QUERY_CMPLT_LEN)?;
    check_request_id(message, m, request_id)?;
    check_status(message, field(m, 12))?;
    sub_buffer(
        message,
        m,
        8,
        QUERY_CMPLT_LEN,
        (field(m, 20), field(m, 16)),
        (
            Field::InformationBufferOffset,
            Field::InformationBufferLength,
        ),
    )
}

/// Parses SET_CMPLT.
pub fn parse_set_cmplt(bytes: &[u8], request_id: u32) -> Result<(), RndisError> {
    let message = message_name(SET_CMPLT);
    let m = check_header(bytes, SET_CMPLT, SET_CMPLT_LEN)?;
    check_request_id(message, m, request_id)?;
    check_status(message, field(m, 12))
}

/// Parses KEEPALIVE_CMPLT.
pub fn parse_keepalive_cmplt(bytes: &[u8], request_id: u32) -> Result<(), RndisError> {
    let message = message_name(KEEPALIVE_CMPLT);
    let m = check_header(bytes, KEEPALIVE_CMPLT, KEEPALIVE_CMPLT_LEN)?;
    check_request_id(message, m, request_id)?;
    check_status(message, field(m, 12))
}

/// Parses RESET_CMPLT; returns AddressingReset (true: the host must set the packet filter and
/// multicast list again).
pub fn parse_reset_cmplt(bytes: &[u8]) -> Result<bool, RndisError> {
    let message = message_name(RESET_CMPLT);
    let m = check_header(bytes, RESET_CMPLT, RESET_CMPLT_LEN)?;
    check_status(message, field(m, 8))?;
    Ok(field(m, 12) != 0)
}

/// Parses a device-sent KEEPALIVE_MSG; returns its RequestId for [`keepalive_cmplt`].
pub fn parse_keepalive_msg(bytes: &[u8]) -> Result<u32, RndisError> {
    let m = check_header(bytes, KEEPALIVE_MSG, KEEPALIVE_LEN)?;
    Ok(field(m, 8))
}

/// REMOTE_NDIS_INDICATE_STATUS_MSG.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Indication<'a> {
    MediaConnect,
    MediaDisconnect,
    /// Any other status, with its status buffer.
    Other {
        status: u32,
        buffer: &'a [u8],
    },
}

/// Parses INDICATE_STATUS (StatusBufferOffset counts from the Status field, byte 8).
pub fn parse_indicate_status(bytes: &[u8]) -> Result<Indication<'_>, RndisError> {
    let message = message_name(INDICATE_STATUS_MSG);
    let m = check_header(bytes, INDICATE_STATUS_MSG, INDICATE_STATUS_LEN)?;
    let status = field(m, 8);
    let buffer = sub_buffer(
        message,
        m,
        8,
        INDICATE_STATUS_LEN,
        (field(m, 16), field(m, 12)),
        (Field::StatusBufferOffset, Field::StatusBufferLength),
    )?;
    Ok(match status {
        STATUS_MEDIA_CONNECT => Indication::MediaConnect,
        STATUS_MEDIA_DISCONNECT => Indication::MediaDisconnect,
        _ => Indication::Other { status, buffer },
    })
}

/// A query answer's value as a little-endian u32 (exactly 4 bytes).
pub fn info_u32(message: &'static str, field_name: Field, info: &[u8]) -> Result<u32, RndisError> {
    match info {
        [a, b, c, d] => Ok(u32::from_le_bytes([*a, *b, *c, *d])),
        _ => Err(RndisError::BadField {
            message,
            field: field_name,
            expected: Expected::Text("a 4-byte information buffer"),
            got: info.len() as u64,
        }),
    }
}

/// A query answer's MAC address: exactly 6 bytes, unicast, not all zero.
pub fn info_mac(info: &[u8]) -> Result<[u8; 6], RndisError> {
    let message = message_name(QUERY_CMPLT);
    let mac: [u8; 6] = info.try_into().map_err(|_| RndisError::BadField {
        message,
        field: Field::InformationBufferLength,
        expected: Expected::Equal(6),
        got: info.len() as u64,
    })?;
    if mac == [0; 6] || mac[0] & 1 != 0 {
        return Err(RndisError::BadField {
            message,
            field: Field::MacAddress,
            expected: Expected::Text("a unicast, non-zero address"),
            got: mac.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)),
        });
    }
    Ok(mac)
}

// ----- session

/// Where a [`RndisSession`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Nothing sent yet (or after HALT).
    Idle,
    /// INITIALIZE sent.
    Initializing,
    /// QUERY OID_802_3_PERMANENT_ADDRESS sent.
    QueryingMac,
    /// QUERY OID_GEN_MAXIMUM_FRAME_SIZE sent.
    QueryingMaxFrame,
    /// SET OID_GEN_CURRENT_PACKET_FILTER sent.
    SettingFilter,
    /// Data may flow.
    Ready,
    /// RESET sent.
    Resetting,
    /// The device refused a step of initialization; call `start` again (after a USB reset).
    Failed,
}

/// What the device told us during initialization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub init: InitComplete,
    pub mac: [u8; 6],
    /// OID_GEN_MAXIMUM_FRAME_SIZE as reported. The spec means the payload without the
    /// Ethernet header (1500); QEMU 7.2 reports 1514.
    pub max_frame_size: u32,
}

impl DeviceInfo {
    /// The IP MTU to use: the reported size, capped at 1500.
    pub fn mtu(&self) -> u32 {
        self.max_frame_size.min(1500)
    }
    /// The largest Ethernet frame (header included, no FCS) one bulk-OUT transfer can carry.
    pub fn max_tx_frame(&self) -> usize {
        let by_transfer = (self.init.max_transfer_size as usize).saturating_sub(PACKET_HEADER_LEN);
        by_transfer.min(MAX_FRAME_LEN)
    }
}

/// What the caller does next after [`RndisSession::on_response`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionEvent {
    /// Send these bytes with SEND_ENCAPSULATED_COMMAND, then read the response.
    Send(Vec<u8>),
    /// Initialization (or re-setting the filter after a reset) finished: data may flow.
    Ready(DeviceInfo),
    /// The device sent KEEPALIVE_MSG: send this KEEPALIVE_CMPLT; a pending request still waits.
    Reply(Vec<u8>),
    /// INDICATE_STATUS media connect (`true`) or disconnect; a pending request still waits.
    Link(bool),
    /// Another INDICATE_STATUS code, ignored; a pending request still waits.
    StatusIndication(u32),
    /// A [`RndisSession::query`] finished.
    QueryDone { oid: u32, info: Vec<u8> },
    /// A [`RndisSession::set`] finished.
    SetDone { oid: u32 },
    /// A host keepalive was answered.
    KeepaliveDone,
    /// RESET completed without AddressingReset.
    ResetDone,
    /// The device had nothing queued (QEMU answers one zero byte): read again later.
    NoResponse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pending {
    None,
    Init(u32),
    Query(u32, u32),
    Set(u32, u32),
    Keepalive(u32),
    Reset,
}

/// Host side of one RNDIS function: builds the requests and consumes the responses of the
/// initialization sequence INITIALIZE → QUERY MAC → QUERY max frame → SET packet filter →
/// ready, plus keepalive, queries, sets, reset and halt afterwards. One request outstanding
/// at a time. Does no I/O.
///
/// Errors from [`on_response`](Self::on_response) leave the session where it was (a stale or
/// corrupt response can be skipped by reading again), except a failure Status during
/// initialization, which moves it to [`SessionState::Failed`].
#[derive(Clone, Debug)]
pub struct RndisSession {
    state: SessionState,
    pending: Pending,
    next_id: u32,
    host_max_transfer: u32,
    filter: u32,
    init: Option<InitComplete>,
    mac: Option<[u8; 6]>,
    info: Option<DeviceInfo>,
    link_up: Option<bool>,
}

impl Default for RndisSession {
    fn default() -> Self {
        Self::new(DEFAULT_HOST_MAX_TRANSFER)
    }
}

impl RndisSession {
    /// `host_max_transfer`: the largest message the host will read in one bulk-IN transfer.
    pub fn new(host_max_transfer: u32) -> Self {
        Self {
            state: SessionState::Idle,
            pending: Pending::None,
            next_id: 1,
            host_max_transfer,
            filter: DEFAULT_PACKET_FILTER,
            init: None,
            mac: None,
            info: None,
            link_up: None,
        }
    }

    pub fn state(&self) -> SessionState {
        self.state
    }
    pub fn device_info(&self) -> Option<&DeviceInfo> {
        self.info.as_ref()
    }
    /// The last media state the device indicated, if any.
    pub fn link_up(&self) -> Option<bool> {
        self.link_up
    }
    /// A request was sent and its completion has not been consumed yet.
    pub fn awaiting_response(&self) -> bool {
        self.pending != Pending::None
    }
    /// The packet filter the session sets (default directed | multicast | broadcast); takes
    /// effect at the next `start` or reset.
    pub fn set_filter(&mut self, filter: u32) {
        self.filter = filter;
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1); // never 0
        id
    }

    fn send_query(&mut self, oid: u32) -> Vec<u8> {
        let id = self.take_id();
        self.pending = Pending::Query(id, oid);
        query_msg(id, oid)
    }

    fn send_filter(&mut self) -> Vec<u8> {
        let id = self.take_id();
        self.pending = Pending::Set(id, OID_GEN_CURRENT_PACKET_FILTER);
        self.state = SessionState::SettingFilter;
        set_packet_filter_msg(id, self.filter)
    }

    /// Starts (or restarts) initialization: returns INITIALIZE_MSG to send.
    pub fn start(&mut self) -> Vec<u8> {
        let id = self.take_id();
        self.pending = Pending::Init(id);
        self.state = SessionState::Initializing;
        self.init = None;
        self.mac = None;
        self.info = None;
        initialize_msg(id, self.host_max_transfer)
    }

    fn ready_request(&self, request: &'static str) -> Result<(), RndisError> {
        if self.state != SessionState::Ready || self.pending != Pending::None {
            return Err(RndisError::Busy {
                request,
                state: self.state,
            });
        }
        Ok(())
    }

    /// A QUERY once ready (e.g. OID_GEN_LINK_SPEED, OID_GEN_MEDIA_CONNECT_STATUS).
    pub fn query(&mut self, oid: u32) -> Result<Vec<u8>, RndisError> {
        self.ready_request(message_name(QUERY_MSG))?;
        Ok(self.send_query(oid))
    }

    /// A SET once ready.
    pub fn set(&mut self, oid: u32, value: &[u8]) -> Result<Vec<u8>, RndisError> {
        self.ready_request(message_name(SET_MSG))?;
        let id = self.take_id();
        self.pending = Pending::Set(id, oid);
        Ok(set_msg(id, oid, value))
    }

    /// A host KEEPALIVE once ready (Linux sends one every 5 s of control-channel silence).
    pub fn keepalive(&mut self) -> Result<Vec<u8>, RndisError> {
        self.ready_request(message_name(KEEPALIVE_MSG))?;
        let id = self.take_id();
        self.pending = Pending::Keepalive(id);
        Ok(keepalive_msg(id))
    }

    /// RESET from any state after INITIALIZE_CMPLT; drops whatever was pending.
    pub fn reset(&mut self) -> Result<Vec<u8>, RndisError> {
        if self.info.is_none() {
            return Err(RndisError::Busy {
                request: message_name(RESET_MSG),
                state: self.state,
            });
        }
        self.pending = Pending::Reset;
        self.state = SessionState::Resetting;
        Ok(reset_msg())
    }

    /// HALT: the device expects no completion; the session returns to Idle.
    pub fn halt(&mut self) -> Vec<u8> {
        let id = self.take_id();
        self.pending = Pending::None;
        self.state = SessionState::Idle;
        self.info = None;
        halt_msg(id)
    }

    /// The pending completion arrived but refused the request (a Status other than success)
    /// or carried an unusable value: the request is over; initialization cannot go on.
    fn refused(&mut self, e: RndisError) -> RndisError {
        self.pending = Pending::None;
        if self.state != SessionState::Ready {
            self.state = SessionState::Failed;
        }
        e
    }

    fn fail_on_status(&mut self, e: RndisError) -> RndisError {
        if matches!(e, RndisError::Status { .. }) {
            self.refused(e)
        } else {
            e
        }
    }

    /// Consumes one GET_ENCAPSULATED_RESPONSE answer.
    pub fn on_response(&mut self, bytes: &[u8]) -> Result<SessionEvent, RndisError> {
        // QEMU answers one zero byte when no response is queued; treat any short all-zero
        // answer the same.
        if bytes.len() < 8 && bytes.iter().all(|b| *b == 0) {
            return Ok(SessionEvent::NoResponse);
        }
        match message_type(bytes) {
            Some(INDICATE_STATUS_MSG) => {
                return Ok(match parse_indicate_status(bytes)? {
                    Indication::MediaConnect => {
                        self.link_up = Some(true);
                        SessionEvent::Link(true)
                    }
                    Indication::MediaDisconnect => {
                        self.link_up = Some(false);
                        SessionEvent::Link(false)
                    }
                    Indication::Other { status, .. } => SessionEvent::StatusIndication(status),
                });
            }
            Some(KEEPALIVE_MSG) => {
                let id = parse_keepalive_msg(bytes)?;
                return Ok(SessionEvent::Reply(keepalive_cmplt(id)));
            }
            _ => {}
        }
        match self.pending {
            Pending::None => Err(RndisError::BadField {
                message: "unsolicited response",
                field: Field::MessageType,
                expected: Expected::Text("no completion (no request pending)"),
                got: u64::from(message_type(bytes).unwrap_or(0)),
            }),
            Pending::Init(id) => {
                let ic = parse_initialize_cmplt(bytes, id).map_err(|e| match e {
                    // Version, medium or size the host cannot use: as fatal as a failure Status.
                    RndisError::BadField {
                        field:
                            Field::MajorVersion
                            | Field::Medium
                            | Field::MaxTransferSize
                            | Field::PacketAlignmentFactor,
                        ..
                    } => self.refused(e),
                    _ => self.fail_on_status(e),
                })?;
                self.init = Some(ic);
                self.state = SessionState::QueryingMac;
                Ok(SessionEvent::Send(
                    self.send_query(OID_802_3_PERMANENT_ADDRESS),
                ))
            }
            Pending::Query(id, oid) => {
                let info = parse_query_cmplt(bytes, id).map_err(|e| self.fail_on_status(e))?;
                match self.state {
                    SessionState::QueryingMac => {
                        self.mac = Some(info_mac(info).map_err(|e| self.refused(e))?);
                        self.state = SessionState::QueryingMaxFrame;
                        Ok(SessionEvent::Send(
                            self.send_query(OID_GEN_MAXIMUM_FRAME_SIZE),
                        ))
                    }
                    SessionState::QueryingMaxFrame => {
                        let message = message_name(QUERY_CMPLT);
                        let max = info_u32(message, Field::MaxFrameSize, info)
                            .map_err(|e| self.refused(e))?;
                        if !(68..=65535).contains(&max) {
                            return Err(self.refused(RndisError::BadField {
                                message,
                                field: Field::MaxFrameSize,
                                expected: Expected::Range(68, 65535),
                                got: u64::from(max),
                            }));
                        }
                        let (Some(init), Some(mac)) = (self.init, self.mac) else {
                            return Err(RndisError::Busy {
                                request: message,
                                state: self.state,
                            });
                        };
                        self.info = Some(DeviceInfo {
                            init,
                            mac,
                            max_frame_size: max,
                        });
                        Ok(SessionEvent::Send(self.send_filter()))
                    }
                    _ => {
                        self.pending = Pending::None;
                        Ok(SessionEvent::QueryDone {
                            oid,
                            info: info.to_vec(),
                        })
                    }
                }
            }
            Pending::Set(id, oid) => {
                parse_set_cmplt(bytes, id).map_err(|e| self.fail_on_status(e))?;
                self.pending = Pending::None;
                if self.state == SessionState::SettingFilter {
                    self.state = SessionState::Ready;
                    match self.info {
                        Some(info) => Ok(SessionEvent::Ready(info)),
                        None => Err(RndisError::Busy {
                            request: message_name(SET_CMPLT),
                            state: self.state,
                        }),
                    }
                } else {
                    Ok(SessionEvent::SetDone { oid })
                }
            }
            Pending::Keepalive(id) => {
                parse_keepalive_cmplt(bytes, id).map_err(|e| self.fail_on_status(e))?;
                self.pending = Pending::None;
                Ok(SessionEvent::KeepaliveDone)
            }
            Pending::Reset => {
                let addressing_reset =
                    parse_reset_cmplt(bytes).map_err(|e| self.fail_on_status(e))?;
                if addressing_reset {
                    Ok(SessionEvent::Send(self.send_filter()))
                } else {
                    self.pending = Pending::None;
                    self.state = SessionState::Ready;
                    Ok(SessionEvent::ResetDone)
                }
            }
        }
    }
}

// ----- data path

/// Appends one REMOTE_NDIS_PACKET_MSG carrying `frame` (an Ethernet frame without FCS) to
/// `out`. Nothing follows the frame: MessageLength is exactly the bytes appended. The caller
/// keeps `frame.len()` within [`DeviceInfo::max_tx_frame`].
pub fn encode_packet(frame: &[u8], out: &mut Vec<u8>) {
    let total = PACKET_HEADER_LEN + frame.len();
    out.reserve(total);
    put(out, PACKET_MSG);
    put(out, total as u32);
    put(out, PACKET_DATA_OFFSET);
    put(out, frame.len() as u32);
    for _ in 0..7 {
        // OOBDataOffset, OOBDataLength, NumOOBDataElements, PerPacketInfoOffset,
        // PerPacketInfoLength, VcHandle, Reserved
        put(out, 0);
    }
    out.extend_from_slice(frame);
}

/// True when a bulk transfer of `len` bytes must be followed by a zero-length packet: its
/// length is a non-zero multiple of the endpoint's wMaxPacketSize. Never pad instead (QEMU 7.2
/// keeps padding bytes and loses every later frame).
pub fn transfer_needs_zlp(len: usize, max_packet: usize) -> bool {
    len != 0 && max_packet != 0 && len.is_multiple_of(max_packet)
}

/// Receive counters for the caller to keep per interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RndisRxStats {
    /// Frames delivered.
    pub frames: u64,
    /// MessageLength or DataLength (or an OOB/per-packet length) out of range.
    pub bad_length: u64,
    /// DataOffset (or an OOB/per-packet offset) outside the message.
    pub bad_offset: u64,
    /// MessageType other than PACKET_MSG.
    pub bad_type: u64,
    /// A message longer than the bytes left in the transfer.
    pub truncated: u64,
}

impl RndisRxStats {
    /// Counts one item of [`decode_packets`].
    pub fn record(&mut self, item: &Result<&[u8], RndisError>) {
        match item {
            Ok(_) => self.frames += 1,
            Err(e) => match e.rx_class() {
                RxErrorClass::BadLength => self.bad_length += 1,
                RxErrorClass::BadOffset => self.bad_offset += 1,
                RxErrorClass::BadType => self.bad_type += 1,
                RxErrorClass::Truncated => self.truncated += 1,
            },
        }
    }
    /// All errors.
    pub fn errors(&self) -> u64 {
        self.bad_length + self.bad_offset + self.bad_type + self.truncated
    }
}

/// Iterator over the frames of one bulk-IN transfer (see [`decode_packets`]).
#[derive(Clone, Debug)]
pub struct Packets<'a> {
    rest: &'a [u8],
}

/// Walks the PACKET_MSGs of one bulk-IN transfer, yielding each Ethernet frame. A bad message
/// yields one error and ends the walk. Trailing zero bytes shorter than a header (padding some
/// devices add instead of a zero-length packet) end the walk quietly. An empty transfer (a
/// zero-length packet) yields nothing.
pub fn decode_packets(transfer: &[u8]) -> Packets<'_> {
    Packets { rest: transfer }
}

const PACKET: &str = "REMOTE_NDIS_PACKET_MSG";

fn decode_one(b: &[u8]) -> Result<(&[u8], usize), RndisError> {
    let bad = |field, expected, got: u64| RndisError::BadField {
        message: PACKET,
        field,
        expected,
        got,
    };
    if b.len() < 8 {
        return Err(RndisError::Truncated {
            message: PACKET,
            have: b.len(),
            need: PACKET_HEADER_LEN as u64,
        });
    }
    let ty = field(b, 0);
    if ty != PACKET_MSG {
        return Err(bad(
            Field::MessageType,
            Expected::Equal(u64::from(PACKET_MSG)),
            u64::from(ty),
        ));
    }
    let msg_len = field(b, 4) as usize;
    if msg_len < PACKET_HEADER_LEN {
        return Err(bad(
            Field::MessageLength,
            Expected::AtLeast(PACKET_HEADER_LEN as u64),
            msg_len as u64,
        ));
    }
    if msg_len > b.len() {
        return Err(RndisError::Truncated {
            message: PACKET,
            have: b.len(),
            need: msg_len as u64,
        });
    }
    let m = &b[..msg_len];
    let data_len = field(m, 12);
    let frame = sub_buffer(
        PACKET,
        m,
        8,
        PACKET_HEADER_LEN,
        (field(m, 8), data_len),
        (Field::DataOffset, Field::DataLength),
    )?;
    if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&frame.len()) {
        return Err(bad(
            Field::DataLength,
            Expected::Range(MIN_FRAME_LEN as u64, MAX_FRAME_LEN as u64),
            u64::from(data_len),
        ));
    }
    // Out-of-band data and per-packet info: unused, but must lie inside the message.
    let oob_off = field(m, 16);
    let oob_len = field(m, 20);
    let oob_count = field(m, 24);
    if oob_off != 0 || oob_len != 0 || oob_count != 0 {
        check_region(
            m,
            oob_off,
            oob_len,
            Field::OobDataOffset,
            Field::OobDataLength,
        )?;
    }
    let ppi_off = field(m, 28);
    let ppi_len = field(m, 32);
    if ppi_off != 0 || ppi_len != 0 {
        check_region(
            m,
            ppi_off,
            ppi_len,
            Field::PerPacketInfoOffset,
            Field::PerPacketInfoLength,
        )?;
    }
    Ok((frame, msg_len))
}

/// An (offset from byte 8, length) region that must start after the header and end inside
/// the message, even when empty.
fn check_region(
    m: &[u8],
    offset: u32,
    length: u32,
    offset_field: Field,
    length_field: Field,
) -> Result<(), RndisError> {
    let start = 8 + u64::from(offset);
    if start < PACKET_HEADER_LEN as u64 || start > m.len() as u64 {
        return Err(RndisError::BadField {
            message: PACKET,
            field: offset_field,
            expected: Expected::Range(PACKET_DATA_OFFSET as u64, m.len() as u64 - 8),
            got: u64::from(offset),
        });
    }
    if start + u64::from(length) > m.len() as u64 {
        return Err(RndisError::BadField {
            message: PACKET,
            field: length_field,
            expected: Expected::AtMost(m.len() as u64 - start),
            got: u64::from(length),
        });
    }
    Ok(())
}

impl<'a> Iterator for Packets<'a> {
    type Item = Result<&'a [u8], RndisError>;

    fn next(&mut self) -> Option<Self::Item> {
        let b = self.rest;
        if b.is_empty() || (b.len() < PACKET_HEADER_LEN && b.iter().all(|x| *x == 0)) {
            self.rest = &[];
            return None;
        }
        match decode_one(b) {
            Ok((frame, used)) => {
                self.rest = &b[used..];
                Some(Ok(frame))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}
