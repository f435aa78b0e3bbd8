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

use crate::descriptor::{Configuration, Direction, Endpoint, TransferType};
use crate::matching::is_rndis;

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

    /// Gives up on the pending request (its completion never came): a late completion is
    /// then unsolicited and refused. Initialization cannot go on after this
    /// ([`SessionState::Failed`]); once ready, the session stays ready.
    pub fn abandon(&mut self) {
        if self.pending != Pending::None {
            self.pending = Pending::None;
            if self.state != SessionState::Ready {
                self.state = SessionState::Failed;
            }
        }
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

/// Walks one received transfer: every valid frame goes to `deliver` and is counted in
/// `stats`; a bad message is counted and ends the walk (its lengths cannot be trusted to find
/// the next one) and is returned for the caller to report.
pub fn receive_transfer(
    transfer: &[u8],
    stats: &mut RndisRxStats,
    mut deliver: impl FnMut(&[u8]),
) -> Option<RndisError> {
    for item in decode_packets(transfer) {
        stats.record(&item);
        match item {
            Ok(frame) => deliver(frame),
            Err(error) => return Some(error),
        }
    }
    None
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

// ----- the function in a configuration

/// Where an RNDIS function lives in one configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RndisInterfaces {
    /// The communication interface: control messages go to it (wIndex of
    /// SEND_ENCAPSULATED_COMMAND / GET_ENCAPSULATED_RESPONSE).
    pub control_interface: u8,
    pub data_interface: u8,
    /// The data interface's alternate setting holding the bulk pair (0 on QEMU and most
    /// devices; anything else needs SET_INTERFACE).
    pub data_alt: u8,
    pub bulk_in: Endpoint,
    pub bulk_out: Endpoint,
    /// Interrupt IN of the communication interface (RESPONSE_AVAILABLE), if declared.
    pub notify: Option<Endpoint>,
}

/// Finds the RNDIS communication interface of `config` and its data interface: the CDC
/// union's first slave, or (devices without a union descriptor) the next interface number.
/// The data interface must have an alternate setting with a bulk IN and a bulk OUT endpoint;
/// None when anything is missing.
pub fn find_interfaces(config: &Configuration) -> Option<RndisInterfaces> {
    let (control_interface, comm) = config.interfaces.iter().find_map(|i| {
        i.alternates
            .iter()
            .find(|a| is_rndis(a))
            .map(|a| (i.number, a))
    })?;
    let data_interface = match comm.cdc_union() {
        Some((_, slaves)) => *slaves.first()?,
        None => control_interface.checked_add(1)?,
    };
    if data_interface == control_interface {
        return None;
    }
    let data = config
        .interfaces
        .iter()
        .find(|i| i.number == data_interface)?;
    let (data_alt, bulk_in, bulk_out) = data.alternates.iter().find_map(|a| {
        Some((
            a.alt,
            a.find_endpoint(TransferType::Bulk, Direction::In)?,
            a.find_endpoint(TransferType::Bulk, Direction::Out)?,
        ))
    })?;
    Some(RndisInterfaces {
        control_interface,
        data_interface,
        data_alt,
        bulk_in: bulk_in.clone(),
        bulk_out: bulk_out.clone(),
        notify: comm
            .find_endpoint(TransferType::Interrupt, Direction::In)
            .cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::ToString;
    use alloc::vec;

    // Device-side messages (what a device would send).
    use crate::tests::rndis_device::{
        indicate, init_cmplt, le, query_cmplt, reset_cmplt, set_cmplt, words,
    };

    const MAC: [u8; 6] = [0x40, 0x54, 0x00, 0x12, 0x34, 0x56];

    /// QEMU's check on QUERY/SET input buffers (hw/usb/dev-network.c, after CVE-2016-?):
    /// stall unless the buffer lies strictly inside the message.
    fn qemu_accepts_info_buffer(msg: &[u8]) -> bool {
        let length = msg.len() as u64;
        let bufoffs = u64::from(le(msg, 20)) + 8;
        let buflen = u64::from(le(msg, 16));
        !(buflen > length || bufoffs >= length || bufoffs + buflen > length)
    }

    // ----- builders

    #[test]
    fn initialize_layout() {
        let m = initialize_msg(7, 1580);
        assert_eq!(m, words(&[2, 24, 7, 1, 0, 1580]));
    }

    #[test]
    fn query_layout_and_qemu_accepts_it() {
        let m = query_msg(3, OID_802_3_PERMANENT_ADDRESS);
        assert_eq!(m, words(&[4, 28, 3, 0x0101_0101, 0, 0, 0]));
        assert!(qemu_accepts_info_buffer(&m));
        // The spec-literal alternative (offset 20, length 0) is what QEMU stalls.
        let mut spec = m.clone();
        spec[20..24].copy_from_slice(&20u32.to_le_bytes());
        assert!(!qemu_accepts_info_buffer(&spec));
    }

    #[test]
    fn set_layout_and_qemu_accepts_it() {
        let m = set_packet_filter_msg(9, DEFAULT_PACKET_FILTER);
        assert_eq!(m, words(&[5, 32, 9, 0x0001_010E, 4, 20, 0, 0x0B]));
        assert!(qemu_accepts_info_buffer(&m));
        // The value sits at RequestId (8) + InformationBufferOffset.
        let off = 8 + le(&m, 20) as usize;
        assert_eq!(
            le(&m, off),
            PACKET_TYPE_DIRECTED | PACKET_TYPE_MULTICAST | 8
        );
        let empty = set_msg(1, OID_GEN_CURRENT_PACKET_FILTER, &[]);
        assert_eq!(le(&empty, 4), 28);
        assert_eq!(le(&empty, 20), 0);
    }

    #[test]
    fn keepalive_reset_halt_layouts() {
        assert_eq!(keepalive_msg(5), words(&[8, 12, 5]));
        assert_eq!(reset_msg(), words(&[6, 12, 0]));
        assert_eq!(halt_msg(6), words(&[3, 12, 6]));
        assert_eq!(
            keepalive_cmplt(0x1234),
            words(&[0x8000_0008, 16, 0x1234, 0])
        );
    }

    // ----- completions: round trips

    #[test]
    fn qemu_init_cmplt_parses() {
        let ic = parse_initialize_cmplt(&init_cmplt(1, STATUS_SUCCESS), 1).unwrap();
        assert_eq!(
            ic,
            InitComplete {
                major_version: 1,
                minor_version: 0,
                device_flags: 1,
                medium: 0,
                max_packets_per_transfer: 1,
                max_transfer_size: 1580,
                packet_alignment_factor: 0,
            }
        );
    }

    #[test]
    fn init_cmplt_rejections() {
        let good = init_cmplt(1, STATUS_SUCCESS);
        let with = |off: usize, v: u32| {
            let mut m = good.clone();
            m[off..off + 4].copy_from_slice(&v.to_le_bytes());
            parse_initialize_cmplt(&m, 1).unwrap_err()
        };
        assert!(matches!(
            with(0, QUERY_CMPLT),
            RndisError::BadField {
                field: Field::MessageType,
                ..
            }
        ));
        assert!(matches!(
            with(4, 51),
            RndisError::BadField {
                field: Field::MessageLength,
                ..
            }
        ));
        assert!(matches!(
            with(4, 53),
            RndisError::Truncated {
                have: 52,
                need: 53,
                ..
            }
        ));
        assert!(matches!(
            with(8, 2),
            RndisError::BadField {
                field: Field::RequestId,
                ..
            }
        ));
        assert_eq!(
            with(12, STATUS_FAILURE),
            RndisError::Status {
                message: "REMOTE_NDIS_INITIALIZE_CMPLT",
                status: STATUS_FAILURE
            }
        );
        assert!(matches!(
            with(16, 2),
            RndisError::BadField {
                field: Field::MajorVersion,
                ..
            }
        ));
        assert!(matches!(
            with(28, 1),
            RndisError::BadField {
                field: Field::Medium,
                ..
            }
        ));
        assert!(matches!(
            with(36, 100),
            RndisError::BadField {
                field: Field::MaxTransferSize,
                ..
            }
        ));
        assert!(matches!(
            with(40, 8),
            RndisError::BadField {
                field: Field::PacketAlignmentFactor,
                ..
            }
        ));
        // MaxPacketsPerTransfer 0 is read as 1.
        let mut m = good.clone();
        m[32..36].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            parse_initialize_cmplt(&m, 1)
                .unwrap()
                .max_packets_per_transfer,
            1
        );
        // A longer MessageLength that the buffer holds is fine (extra bytes ignored).
        let mut m = good.clone();
        m.extend_from_slice(&[0; 8]);
        m[4..8].copy_from_slice(&60u32.to_le_bytes());
        assert!(parse_initialize_cmplt(&m, 1).is_ok());
        // Bytes after MessageLength in the buffer are not part of the message.
        let mut m = good.clone();
        m.extend_from_slice(&[0xFF; 8]);
        assert!(parse_initialize_cmplt(&m, 1).is_ok());
    }

    #[test]
    fn query_cmplt_round_trip_and_rejections() {
        let m = query_cmplt(4, STATUS_SUCCESS, &MAC);
        assert_eq!(parse_query_cmplt(&m, 4).unwrap(), &MAC);
        assert_eq!(info_mac(parse_query_cmplt(&m, 4).unwrap()).unwrap(), MAC);
        let empty = query_cmplt(4, STATUS_SUCCESS, &[]);
        assert_eq!(parse_query_cmplt(&empty, 4).unwrap(), &[] as &[u8]);
        let e = parse_query_cmplt(&m, 5).unwrap_err();
        assert!(matches!(
            e,
            RndisError::BadField {
                field: Field::RequestId,
                got: 4,
                ..
            }
        ));
        let s = e.to_string();
        assert!(
            s.contains("REMOTE_NDIS_QUERY_CMPLT") && s.contains("RequestId"),
            "{s}"
        );
        assert!(s.contains("0x5") && s.contains("is 4"), "{s}");
        let e = parse_query_cmplt(&query_cmplt(4, STATUS_NOT_SUPPORTED, &[]), 4).unwrap_err();
        assert!(e.to_string().contains("RNDIS_STATUS_NOT_SUPPORTED"), "{e}");
        // Offset inside the header.
        let mut bad = m.clone();
        bad[20..24].copy_from_slice(&8u32.to_le_bytes());
        assert!(matches!(
            parse_query_cmplt(&bad, 4),
            Err(RndisError::BadField {
                field: Field::InformationBufferOffset,
                ..
            })
        ));
        // Offset past the end.
        bad[20..24].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        assert!(matches!(
            parse_query_cmplt(&bad, 4),
            Err(RndisError::BadField {
                field: Field::InformationBufferOffset,
                ..
            })
        ));
        // Length past the end.
        let mut bad = m.clone();
        bad[16..20].copy_from_slice(&7u32.to_le_bytes());
        assert!(matches!(
            parse_query_cmplt(&bad, 4),
            Err(RndisError::BadField {
                field: Field::InformationBufferLength,
                ..
            })
        ));
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_query_cmplt(&bad, 4).is_err());
        // MessageLength shorter than the buffer it describes.
        let mut bad = m.clone();
        bad[4..8].copy_from_slice(&26u32.to_le_bytes());
        assert!(matches!(
            parse_query_cmplt(&bad, 4),
            Err(RndisError::BadField {
                field: Field::InformationBufferLength,
                ..
            })
        ));
    }

    #[test]
    fn info_values() {
        assert_eq!(
            info_u32("x", Field::MaxFrameSize, &1514u32.to_le_bytes()).unwrap(),
            1514
        );
        assert!(info_u32("x", Field::MaxFrameSize, &[1, 2, 3]).is_err());
        assert!(info_mac(&[0; 6]).is_err());
        assert!(info_mac(&[0xFF; 6]).is_err());
        assert!(info_mac(&MAC[..5]).is_err());
        assert!(info_mac(&[0x40, 0x54, 0, 0x12, 0x34, 0x56, 0]).is_err());
    }

    #[test]
    fn set_keepalive_reset_cmplt_round_trips() {
        assert_eq!(parse_set_cmplt(&set_cmplt(3, 0), 3), Ok(()));
        assert!(matches!(
            parse_set_cmplt(&set_cmplt(3, 0), 4),
            Err(RndisError::BadField {
                field: Field::RequestId,
                ..
            })
        ));
        assert!(matches!(
            parse_set_cmplt(&set_cmplt(3, STATUS_INVALID_DATA), 3),
            Err(RndisError::Status { .. })
        ));
        assert!(matches!(
            parse_set_cmplt(&words(&[SET_CMPLT, 12, 3]), 3),
            Err(RndisError::BadField {
                field: Field::MessageLength,
                ..
            })
        ));
        let ka = words(&[KEEPALIVE_CMPLT, 16, 9, 0]);
        assert_eq!(parse_keepalive_cmplt(&ka, 9), Ok(()));
        assert!(parse_keepalive_cmplt(&ka, 8).is_err());
        assert!(matches!(
            parse_keepalive_cmplt(&set_cmplt(9, 0), 9),
            Err(RndisError::BadField {
                field: Field::MessageType,
                ..
            })
        ));
        assert_eq!(parse_reset_cmplt(&reset_cmplt(0, 1)), Ok(true));
        assert_eq!(parse_reset_cmplt(&reset_cmplt(0, 0)), Ok(false));
        assert!(matches!(
            parse_reset_cmplt(&reset_cmplt(STATUS_FAILURE, 0)),
            Err(RndisError::Status { .. })
        ));
        // Device keepalive request → reply.
        let req = keepalive_msg(0x77);
        assert_eq!(parse_keepalive_msg(&req), Ok(0x77));
        assert_eq!(
            keepalive_cmplt(parse_keepalive_msg(&req).unwrap()),
            words(&[KEEPALIVE_CMPLT, 16, 0x77, 0])
        );
    }

    #[test]
    fn indicate_status_round_trips() {
        assert_eq!(
            parse_indicate_status(&indicate(STATUS_MEDIA_CONNECT, &[])),
            Ok(Indication::MediaConnect)
        );
        assert_eq!(
            parse_indicate_status(&indicate(STATUS_MEDIA_DISCONNECT, &[])),
            Ok(Indication::MediaDisconnect)
        );
        let m = indicate(0x4001_0012, &[1, 2, 3, 4]);
        assert_eq!(
            parse_indicate_status(&m),
            Ok(Indication::Other {
                status: 0x4001_0012,
                buffer: &[1, 2, 3, 4]
            })
        );
        let mut bad = m.clone();
        bad[16..20].copy_from_slice(&13u32.to_le_bytes()); // one byte too far
        assert!(matches!(
            parse_indicate_status(&bad),
            Err(RndisError::BadField {
                field: Field::StatusBufferLength,
                ..
            })
        ));
        bad[16..20].copy_from_slice(&4u32.to_le_bytes()); // inside the header
        assert!(matches!(
            parse_indicate_status(&bad),
            Err(RndisError::BadField {
                field: Field::StatusBufferOffset,
                ..
            })
        ));
    }

    #[test]
    fn every_parser_truncated_at_every_byte() {
        let msgs: Vec<Vec<u8>> = vec![
            init_cmplt(1, STATUS_SUCCESS),
            query_cmplt(1, 0, &MAC),
            set_cmplt(1, 0),
            words(&[KEEPALIVE_CMPLT, 16, 1, 0]),
            reset_cmplt(0, 1),
            indicate(STATUS_MEDIA_CONNECT, &[9; 8]),
            keepalive_msg(1),
        ];
        for m in &msgs {
            for cut in 0..m.len() {
                let b = &m[..cut];
                assert!(parse_initialize_cmplt(b, 1).is_err());
                assert!(parse_query_cmplt(b, 1).is_err());
                assert!(parse_set_cmplt(b, 1).is_err());
                assert!(parse_keepalive_cmplt(b, 1).is_err());
                assert!(parse_reset_cmplt(b).is_err());
                assert!(parse_indicate_status(b).is_err());
                assert!(parse_keepalive_msg(b).is_err());
                let mut s = RndisSession::default();
                let _ = s.start();
                let _ = s.on_response(b);
            }
        }
    }

    // ----- session

    /// Drives a session through QEMU's answers; returns the session in Ready.
    fn ready_session() -> (RndisSession, DeviceInfo) {
        let mut s = RndisSession::new(1580);
        assert_eq!(s.state(), SessionState::Idle);
        let init = s.start();
        assert_eq!(le(&init, 0), INITIALIZE_MSG);
        let id = le(&init, 8);
        assert_ne!(id, 0);
        assert_eq!(s.state(), SessionState::Initializing);

        let SessionEvent::Send(q) = s.on_response(&init_cmplt(id, STATUS_SUCCESS)).unwrap() else {
            panic!()
        };
        assert_eq!(s.state(), SessionState::QueryingMac);
        assert_eq!(
            (le(&q, 0), le(&q, 12)),
            (QUERY_MSG, OID_802_3_PERMANENT_ADDRESS)
        );
        assert!(qemu_accepts_info_buffer(&q));
        let qid = le(&q, 8);
        assert_ne!(qid, id);

        let SessionEvent::Send(q) = s.on_response(&query_cmplt(qid, 0, &MAC)).unwrap() else {
            panic!()
        };
        assert_eq!(s.state(), SessionState::QueryingMaxFrame);
        assert_eq!(le(&q, 12), OID_GEN_MAXIMUM_FRAME_SIZE);
        let qid = le(&q, 8);

        let SessionEvent::Send(set) = s
            .on_response(&query_cmplt(qid, 0, &1514u32.to_le_bytes()))
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(s.state(), SessionState::SettingFilter);
        assert_eq!(
            (le(&set, 0), le(&set, 12), le(&set, 28)),
            (SET_MSG, OID_GEN_CURRENT_PACKET_FILTER, 0x0B)
        );
        let sid = le(&set, 8);

        let SessionEvent::Ready(info) = s.on_response(&set_cmplt(sid, 0)).unwrap() else {
            panic!()
        };
        assert_eq!(s.state(), SessionState::Ready);
        assert!(!s.awaiting_response());
        assert_eq!(s.device_info(), Some(&info));
        (s, info)
    }

    #[test]
    fn session_init_sequence_against_qemu() {
        let (_, info) = ready_session();
        assert_eq!(info.mac, MAC);
        assert_eq!(info.max_frame_size, 1514);
        assert_eq!(info.mtu(), 1500);
        assert_eq!(info.init.max_transfer_size, 1580);
        assert_eq!(info.init.max_packets_per_transfer, 1);
        assert_eq!(info.max_tx_frame(), MAX_FRAME_LEN);
    }

    #[test]
    fn session_interleaved_and_stale_responses() {
        let mut s = RndisSession::default();
        let id = le(&s.start(), 8);
        assert_eq!(s.on_response(&[0]), Ok(SessionEvent::NoResponse));
        assert_eq!(s.on_response(&[]), Ok(SessionEvent::NoResponse));
        assert_eq!(
            s.on_response(&indicate(STATUS_MEDIA_CONNECT, &[])),
            Ok(SessionEvent::Link(true))
        );
        assert_eq!(s.link_up(), Some(true));
        assert_eq!(
            s.on_response(&keepalive_msg(0x55)),
            Ok(SessionEvent::Reply(keepalive_cmplt(0x55)))
        );
        assert_eq!(
            s.on_response(&indicate(0x4001_0012, &[])),
            Ok(SessionEvent::StatusIndication(0x4001_0012))
        );
        // Stale completion: refused, state kept; the right one still works.
        assert!(matches!(
            s.on_response(&init_cmplt(id.wrapping_sub(1), STATUS_SUCCESS)),
            Err(RndisError::BadField {
                field: Field::RequestId,
                ..
            })
        ));
        assert_eq!(s.state(), SessionState::Initializing);
        assert!(matches!(
            s.on_response(&set_cmplt(id, 0)),
            Err(RndisError::BadField {
                field: Field::MessageType,
                ..
            })
        ));
        assert!(matches!(
            s.on_response(&init_cmplt(id, STATUS_SUCCESS)),
            Ok(SessionEvent::Send(_))
        ));
        assert_eq!(
            s.on_response(&indicate(STATUS_MEDIA_DISCONNECT, &[])),
            Ok(SessionEvent::Link(false))
        );
        assert_eq!(s.link_up(), Some(false));
    }

    #[test]
    fn session_failures_during_init() {
        let mut s = RndisSession::default();
        let id = le(&s.start(), 8);
        let mut m = init_cmplt(id, STATUS_SUCCESS);
        m[12..16].copy_from_slice(&STATUS_FAILURE.to_le_bytes());
        let e = s.on_response(&m).unwrap_err();
        assert!(e.to_string().contains("RNDIS_STATUS_FAILURE"), "{e}");
        assert_eq!(s.state(), SessionState::Failed);
        // A fresh start recovers.
        let id = le(&s.start(), 8);
        let SessionEvent::Send(q) = s.on_response(&init_cmplt(id, STATUS_SUCCESS)).unwrap() else {
            panic!()
        };
        // A broadcast MAC is refused and fails the session.
        assert!(s
            .on_response(&query_cmplt(le(&q, 8), 0, &[0xFF; 6]))
            .is_err());
        assert_eq!(s.state(), SessionState::Failed);
        assert!(!s.awaiting_response());
        // Medium other than 802.3 is fatal.
        let id = le(&s.start(), 8);
        let mut m = init_cmplt(id, STATUS_SUCCESS);
        m[28..32].copy_from_slice(&1u32.to_le_bytes());
        assert!(s.on_response(&m).is_err());
        assert_eq!(s.state(), SessionState::Failed);
        // Max frame 0 is fatal.
        let id = le(&s.start(), 8);
        let SessionEvent::Send(q) = s.on_response(&init_cmplt(id, STATUS_SUCCESS)).unwrap() else {
            panic!()
        };
        let SessionEvent::Send(q) = s.on_response(&query_cmplt(le(&q, 8), 0, &MAC)).unwrap() else {
            panic!()
        };
        assert!(s
            .on_response(&query_cmplt(le(&q, 8), 0, &0u32.to_le_bytes()))
            .is_err());
        assert_eq!(s.state(), SessionState::Failed);
        // Filter refused.
        let id = le(&s.start(), 8);
        let SessionEvent::Send(q) = s.on_response(&init_cmplt(id, STATUS_SUCCESS)).unwrap() else {
            panic!()
        };
        let SessionEvent::Send(q) = s.on_response(&query_cmplt(le(&q, 8), 0, &MAC)).unwrap() else {
            panic!()
        };
        let SessionEvent::Send(set) = s
            .on_response(&query_cmplt(le(&q, 8), 0, &1500u32.to_le_bytes()))
            .unwrap()
        else {
            panic!()
        };
        assert!(s
            .on_response(&set_cmplt(le(&set, 8), STATUS_NOT_SUPPORTED))
            .is_err());
        assert_eq!(s.state(), SessionState::Failed);
        // Requests other than start are refused when not ready.
        assert!(matches!(
            s.query(OID_GEN_LINK_SPEED),
            Err(RndisError::Busy { .. })
        ));
        assert!(s.keepalive().is_err());
    }

    #[test]
    fn session_after_ready() {
        let (mut s, info) = ready_session();
        // Query link speed.
        let q = s.query(OID_GEN_LINK_SPEED).unwrap();
        assert!(
            matches!(s.query(OID_GEN_LINK_SPEED), Err(RndisError::Busy { .. })),
            "one outstanding"
        );
        let ev = s
            .on_response(&query_cmplt(le(&q, 8), 0, &100_000u32.to_le_bytes()))
            .unwrap();
        assert_eq!(
            ev,
            SessionEvent::QueryDone {
                oid: OID_GEN_LINK_SPEED,
                info: 100_000u32.to_le_bytes().to_vec()
            }
        );
        // Unsupported query: error, request over, still ready.
        let q = s.query(0x0001_0199).unwrap();
        assert!(matches!(
            s.on_response(&query_cmplt(le(&q, 8), STATUS_NOT_SUPPORTED, &[])),
            Err(RndisError::Status { .. })
        ));
        assert_eq!(s.state(), SessionState::Ready);
        assert!(!s.awaiting_response());
        // Set.
        let m = s
            .set(OID_GEN_CURRENT_PACKET_FILTER, &0x2Fu32.to_le_bytes())
            .unwrap();
        assert_eq!(
            s.on_response(&set_cmplt(le(&m, 8), 0)),
            Ok(SessionEvent::SetDone {
                oid: OID_GEN_CURRENT_PACKET_FILTER
            })
        );
        // Keepalive.
        let k = s.keepalive().unwrap();
        assert_eq!(le(&k, 0), KEEPALIVE_MSG);
        assert_eq!(
            s.on_response(&words(&[KEEPALIVE_CMPLT, 16, le(&k, 8), 0])),
            Ok(SessionEvent::KeepaliveDone)
        );
        // Unsolicited completion.
        assert!(s.on_response(&set_cmplt(1, 0)).is_err());
        assert_eq!(s.state(), SessionState::Ready);
        // Reset without addressing reset.
        let r = s.reset().unwrap();
        assert_eq!(r, reset_msg());
        assert_eq!(
            s.on_response(&reset_cmplt(0, 0)),
            Ok(SessionEvent::ResetDone)
        );
        assert_eq!(s.state(), SessionState::Ready);
        // Reset with addressing reset (QEMU's answer): the filter is set again.
        s.reset().unwrap();
        let SessionEvent::Send(set) = s.on_response(&reset_cmplt(0, 1)).unwrap() else {
            panic!()
        };
        assert_eq!(le(&set, 12), OID_GEN_CURRENT_PACKET_FILTER);
        assert_eq!(
            s.on_response(&set_cmplt(le(&set, 8), 0)),
            Ok(SessionEvent::Ready(info))
        );
        // Halt.
        let h = s.halt();
        assert_eq!((le(&h, 0), le(&h, 4)), (HALT_MSG, 12));
        assert_eq!(s.state(), SessionState::Idle);
        assert!(s.reset().is_err());
    }

    #[test]
    fn request_ids_never_zero() {
        let mut s = RndisSession {
            next_id: u32::MAX,
            ..Default::default()
        };
        let a = le(&s.start(), 8);
        assert_eq!(a, u32::MAX);
        let SessionEvent::Send(q) = s.on_response(&init_cmplt(a, STATUS_SUCCESS)).unwrap() else {
            panic!()
        };
        assert_eq!(le(&q, 8), 1);
    }

    #[test]
    fn error_display_names_message_field_expected_got() {
        let e = RndisError::BadField {
            message: "REMOTE_NDIS_PACKET_MSG",
            field: Field::DataOffset,
            expected: Expected::Range(36, 100),
            got: 4000,
        };
        assert_eq!(
            e.to_string(),
            "REMOTE_NDIS_PACKET_MSG: DataOffset is 4000 (0xfa0), expected 36..=100"
        );
        let e = decode_packets(&words(&[QUERY_CMPLT, 44, 0, 0, 0, 0, 0, 0, 0, 0, 0]))
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "REMOTE_NDIS_PACKET_MSG: MessageType 0x80000004 (REMOTE_NDIS_QUERY_CMPLT), expected 0x1"
        );
        let e = decode_packets(&words(&[PACKET_MSG, 400, 36, 14]))
            .next()
            .unwrap()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "REMOTE_NDIS_PACKET_MSG: truncated, 16 bytes of 400"
        );
        let e = RndisError::Busy {
            request: "REMOTE_NDIS_QUERY_MSG",
            state: SessionState::Initializing,
        };
        assert!(e.to_string().contains("Initializing"));
    }

    // ----- data path

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// QEMU 7.2's bulk-OUT reassembly as described in FACTS: packets append to one buffer; a
    /// message is taken once MessageLength bytes are there; anything beyond stays.
    struct QemuOut {
        buf: Vec<u8>,
        delivered: Vec<Vec<u8>>,
    }

    impl QemuOut {
        fn packet(&mut self, p: &[u8]) {
            self.buf.extend_from_slice(p);
            if self.buf.len() < 8 {
                return;
            }
            let len = le(&self.buf, 4) as usize;
            if self.buf.len() < len {
                return;
            }
            if le(&self.buf, 0) == PACKET_MSG {
                let off = le(&self.buf, 8) as usize + 8;
                let n = le(&self.buf, 12) as usize;
                if off + n <= len {
                    self.delivered.push(self.buf[off..off + n].to_vec());
                }
            }
            self.buf.drain(..len.max(1).min(self.buf.len()));
        }
        /// One bulk-OUT transfer split into max-packet packets, plus a ZLP if asked.
        fn transfer(&mut self, t: &[u8], max_packet: usize, zlp: bool) {
            for p in t.chunks(max_packet) {
                self.packet(p);
            }
            if zlp {
                self.packet(&[]);
            }
        }
    }

    #[test]
    fn encode_decode_every_length_with_zlp_rule() {
        let mut qemu = QemuOut {
            buf: Vec::new(),
            delivered: Vec::new(),
        };
        let mut zlps = 0;
        for len in MIN_FRAME_LEN..=1514 {
            let f = frame(len, len as u8);
            let mut out = Vec::new();
            encode_packet(&f, &mut out);
            let total = len + PACKET_HEADER_LEN;
            assert_eq!(out.len(), total);
            assert_eq!(
                le(&out, 4) as usize,
                total,
                "MessageLength is the whole transfer"
            );
            assert_eq!(le(&out, 8), 36);
            assert_eq!(le(&out, 12) as usize, len);
            assert!(out[16..44].iter().all(|b| *b == 0));
            let zlp = transfer_needs_zlp(out.len(), 64);
            assert_eq!(zlp, total.is_multiple_of(64), "len {len}");
            zlps += usize::from(zlp);
            assert_eq!(
                transfer_needs_zlp(out.len(), 512),
                total.is_multiple_of(512)
            );
            let got: Vec<_> = decode_packets(&out).collect();
            assert_eq!(got, vec![Ok(&f[..])], "len {len}");
            qemu.transfer(&out, 64, zlp);
            assert!(qemu.buf.is_empty(), "residue after len {len}");
        }
        assert_eq!(qemu.delivered.len(), 1514 - 14 + 1);
        assert!(zlps >= 23);
        for (i, d) in qemu.delivered.iter().enumerate() {
            assert_eq!(d, &frame(i + 14, (i + 14) as u8));
        }
        assert!(!transfer_needs_zlp(0, 64));
        assert!(!transfer_needs_zlp(64, 0));
    }

    #[test]
    fn qemu_model_shows_why_padding_is_wrong() {
        // What Linux does for a 64-byte multiple: one pad byte. Every later frame is lost.
        let mut qemu = QemuOut {
            buf: Vec::new(),
            delivered: Vec::new(),
        };
        let mut out = Vec::new();
        encode_packet(&frame(84, 1), &mut out); // 128 bytes
        out.push(0);
        qemu.transfer(&out, 64, false);
        let mut next = Vec::new();
        encode_packet(&frame(100, 2), &mut next);
        qemu.transfer(&next, 64, false);
        assert_eq!(qemu.delivered.len(), 1);
        assert!(!qemu.buf.is_empty());
    }

    #[test]
    fn decode_accepts_valid_variants() {
        // Frame at a larger DataOffset (device-side padding after the header).
        let f = frame(60, 3);
        let mut m = words(&[
            PACKET_MSG,
            (48 + 60) as u32,
            40,
            60,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0xEEEE_EEEE,
        ]);
        m.extend_from_slice(&f);
        assert_eq!(decode_packets(&m).collect::<Vec<_>>(), vec![Ok(&f[..])]);
        // MessageLength larger than the data (alignment padding inside the message).
        let mut m = Vec::new();
        encode_packet(&f, &mut m);
        m.extend_from_slice(&[0; 4]);
        m[4..8].copy_from_slice(&108u32.to_le_bytes());
        let mut two = m.clone();
        encode_packet(&frame(70, 4), &mut two);
        let got: Vec<_> = decode_packets(&two).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Ok(&f[..]));
        assert_eq!(got[1].unwrap().len(), 70);
        // VcHandle and Reserved are ignored; OOB and per-packet info inside the message pass.
        let mut m = Vec::new();
        encode_packet(&f, &mut m);
        m[36..44].copy_from_slice(&[0xAB; 8]);
        m[16..20].copy_from_slice(&36u32.to_le_bytes()); // OOB at the frame start, 8 bytes
        m[20..24].copy_from_slice(&8u32.to_le_bytes());
        m[24..28].copy_from_slice(&1u32.to_le_bytes());
        m[28..32].copy_from_slice(&44u32.to_le_bytes());
        m[32..36].copy_from_slice(&16u32.to_le_bytes());
        assert_eq!(decode_packets(&m).collect::<Vec<_>>(), vec![Ok(&f[..])]);
        // 1518 (VLAN-tagged) is the largest frame; the empty transfer (a ZLP) has none.
        let mut m = Vec::new();
        encode_packet(&frame(1518, 0), &mut m);
        assert!(decode_packets(&m).next().unwrap().is_ok());
        assert_eq!(decode_packets(&[]).count(), 0);
        // Trailing zero padding shorter than a header ends the walk quietly.
        let mut m = Vec::new();
        encode_packet(&f, &mut m);
        m.push(0);
        assert_eq!(decode_packets(&m).collect::<Vec<_>>(), vec![Ok(&f[..])]);
    }

    fn classes(t: &[u8]) -> (Vec<&[u8]>, Option<RxErrorClass>) {
        let mut ok = Vec::new();
        let mut err = None;
        let mut n = 0;
        for item in decode_packets(t) {
            n += 1;
            assert!(err.is_none(), "nothing after an error");
            match item {
                Ok(f) => ok.push(f),
                Err(e) => err = Some(e.rx_class()),
            }
            assert!(n <= t.len() / PACKET_HEADER_LEN + 1);
        }
        (ok, err)
    }

    #[test]
    fn decode_every_field_corrupted() {
        let f = frame(100, 9);
        let mut good = Vec::new();
        encode_packet(&f, &mut good); // 144 bytes
        use RxErrorClass::*;
        let cases: &[(usize, u32, Option<RxErrorClass>)] = &[
            (0, 0, Some(BadType)),
            (0, 2, Some(BadType)),
            (0, 0x8000_0001, Some(BadType)),
            (0, u32::MAX, Some(BadType)),
            (4, 0, Some(BadLength)),
            (4, 43, Some(BadLength)),
            (4, 143, Some(BadLength)), // data now ends past the message
            (4, 145, Some(Truncated)),
            (4, u32::MAX, Some(Truncated)),
            (4, 0x8000_0000, Some(Truncated)),
            (8, 0, Some(BadOffset)), // data over the header
            (8, 35, Some(BadOffset)),
            (8, 37, Some(BadLength)), // frame would end one byte past the message
            (8, 137, Some(BadOffset)), // past the end
            (8, u32::MAX, Some(BadOffset)),
            (8, u32::MAX - 7, Some(BadOffset)),
            (12, 0, Some(BadLength)),
            (12, 13, Some(BadLength)),
            (12, 101, Some(BadLength)),
            (12, u32::MAX, Some(BadLength)),
            (16, 4, Some(BadOffset)),   // OOB inside the header
            (16, 200, Some(BadOffset)), // OOB past the end
            (16, u32::MAX, Some(BadOffset)),
            (20, 8, Some(BadOffset)), // OOB length with offset 0
            (24, 1, Some(BadOffset)), // OOB elements with offset 0
            (28, 4, Some(BadOffset)),
            (28, 137, Some(BadOffset)),
            (28, u32::MAX, Some(BadOffset)),
            (32, 4, Some(BadOffset)), // per-packet length with offset 0
            (36, u32::MAX, None),     // VcHandle ignored
            (40, u32::MAX, None),     // Reserved ignored
        ];
        for &(off, v, want) in cases {
            let mut m = good.clone();
            m[off..off + 4].copy_from_slice(&v.to_le_bytes());
            let (ok, err) = classes(&m);
            assert_eq!(err, want, "field at {off} = {v:#x}");
            assert_eq!(ok.len(), usize::from(want.is_none()));
        }
        // OOB offset valid but length overruns: a length error.
        let mut m = good.clone();
        m[16..20].copy_from_slice(&36u32.to_le_bytes());
        m[20..24].copy_from_slice(&101u32.to_le_bytes());
        assert_eq!(classes(&m).1, Some(BadLength));
        let mut m = good.clone();
        m[28..32].copy_from_slice(&36u32.to_le_bytes());
        m[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(classes(&m).1, Some(BadLength));
        // Every single-byte corruption: never panics, never yields a frame outside the buffer.
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7F, 0x80, 0xFF] {
                let mut m = good.clone();
                m[i] = v;
                for fr in classes(&m).0 {
                    assert!((MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&fr.len()));
                }
            }
        }
    }

    #[test]
    fn decode_truncated_at_every_byte() {
        let f = frame(1514, 5);
        let mut good = Vec::new();
        encode_packet(&f, &mut good);
        assert_eq!(classes(&[]), (vec![], None));
        for cut in 1..good.len() {
            let (ok, err) = classes(&good[..cut]);
            assert!(ok.is_empty());
            assert_eq!(err, Some(RxErrorClass::Truncated), "cut {cut}");
        }
    }

    #[test]
    fn decode_two_packets_second_truncated() {
        let a = frame(60, 1);
        let b = frame(200, 2);
        let mut t = Vec::new();
        encode_packet(&a, &mut t);
        let first = t.len();
        encode_packet(&b, &mut t);
        let (ok, err) = classes(&t);
        assert_eq!((ok, err), (vec![&a[..], &b[..]], None));
        for cut in first + 1..t.len() {
            let mut stats = RndisRxStats::default();
            let items: Vec<_> = decode_packets(&t[..cut]).collect();
            for i in &items {
                stats.record(i);
            }
            assert_eq!(items.len(), 2);
            assert_eq!(items[0], Ok(&a[..]));
            assert_eq!(
                stats,
                RndisRxStats {
                    frames: 1,
                    truncated: 1,
                    ..Default::default()
                },
                "cut {cut}"
            );
        }
        // Garbage after a good packet is an error item after the frame.
        let mut g = Vec::new();
        encode_packet(&a, &mut g);
        g.push(0xFF);
        let (ok, err) = classes(&g);
        assert_eq!((ok.len(), err), (1, Some(RxErrorClass::Truncated)));
        // A second packet with a bad DataOffset.
        let mut g = t.clone();
        g[first + 8..first + 12].copy_from_slice(&10_000u32.to_le_bytes());
        let mut stats = RndisRxStats::default();
        for i in decode_packets(&g) {
            stats.record(&i);
        }
        assert_eq!(
            stats,
            RndisRxStats {
                frames: 1,
                bad_offset: 1,
                ..Default::default()
            }
        );
        assert_eq!(stats.errors(), 1);
    }

    #[test]
    fn receive_transfer_delivers_until_a_bad_message() {
        let (a, b, c) = (frame(60, 1), frame(1514, 2), frame(100, 3));
        let mut t = Vec::new();
        encode_packet(&a, &mut t);
        encode_packet(&b, &mut t);
        let bad_at = t.len();
        encode_packet(&c, &mut t);
        encode_packet(&a, &mut t);
        let mut stats = RndisRxStats::default();
        let mut got: Vec<Vec<u8>> = Vec::new();
        assert_eq!(
            receive_transfer(&t, &mut stats, |f| got.push(f.to_vec())),
            None
        );
        assert_eq!(got, [a.clone(), b.clone(), c, a.clone()]);
        assert_eq!(stats.frames, 4);
        // The third message's DataLength points past its end: the two before it are
        // delivered, nothing after it is trusted.
        t[bad_at + 12..bad_at + 16].copy_from_slice(&5000u32.to_le_bytes());
        let mut stats = RndisRxStats::default();
        got.clear();
        let error = receive_transfer(&t, &mut stats, |f| got.push(f.to_vec()));
        assert_eq!(error.map(|e| e.rx_class()), Some(RxErrorClass::BadLength));
        assert_eq!(got, [a, b]);
        assert_eq!((stats.frames, stats.errors()), (2, 1));
        // A zero-length packet delivers nothing and is no error.
        assert_eq!(receive_transfer(&[], &mut stats, |_| panic!()), None);
    }

    #[test]
    fn message_length_zero_never_loops() {
        let t = words(&[PACKET_MSG, 0, 36, 14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let items: Vec<_> = decode_packets(&t).collect();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].unwrap_err().rx_class(), RxErrorClass::BadLength);
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn fuzz_no_panic() {
        let mut r = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut stats = RndisRxStats::default();
        let interesting = [
            0u32,
            1,
            7,
            8,
            13,
            14,
            35,
            36,
            43,
            44,
            64,
            1514,
            1518,
            1580,
            0x7FFF_FFFF,
            0x8000_0000,
            u32::MAX,
        ];
        for iter in 0..20_000 {
            // Build a transfer of 1-3 packets, then damage it.
            let mut t = Vec::new();
            for _ in 0..1 + r.below(3) {
                let f = frame(14 + r.below(1505), r.next() as u8);
                encode_packet(&f, &mut t);
            }
            match r.below(4) {
                0 => {
                    let i = r.below(t.len());
                    t[i] = r.next() as u8;
                }
                1 => {
                    let i = r.below(t.len() / 4) * 4;
                    let v = interesting[r.below(interesting.len())];
                    t[i..i + 4].copy_from_slice(&v.to_le_bytes());
                }
                2 => t.truncate(r.below(t.len() + 1)),
                _ => t = (0..r.below(200)).map(|_| r.next() as u8).collect(),
            }
            for item in decode_packets(&t) {
                if let Ok(f) = item {
                    assert!((MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&f.len()));
                }
                stats.record(&item);
            }
            // Control parsers and the session on the same bytes.
            let _ = parse_initialize_cmplt(&t, 1);
            let _ = parse_query_cmplt(&t, 1);
            let _ = parse_set_cmplt(&t, 1);
            let _ = parse_keepalive_cmplt(&t, 1);
            let _ = parse_reset_cmplt(&t);
            let _ = parse_indicate_status(&t);
            let _ = parse_keepalive_msg(&t);
            let mut s = RndisSession::default();
            let _ = s.start();
            if let Err(e) = s.on_response(&t) {
                let _ = format!("{e}");
            }
            // Mutated control responses too.
            let mut c = match iter % 4 {
                0 => init_cmplt(1, STATUS_SUCCESS),
                1 => query_cmplt(1, 0, &MAC),
                2 => indicate(STATUS_MEDIA_CONNECT, &[1, 2, 3, 4]),
                _ => reset_cmplt(0, 1),
            };
            let i = r.below(c.len() / 4) * 4;
            let v = interesting[r.below(interesting.len())];
            c[i..i + 4].copy_from_slice(&v.to_le_bytes());
            c.truncate(r.below(c.len() + 1).max(c.len() - r.below(2)));
            let _ = parse_initialize_cmplt(&c, 1);
            let _ = parse_query_cmplt(&c, 1);
            let _ = parse_indicate_status(&c);
            let _ = parse_reset_cmplt(&c);
            let _ = s.on_response(&c);
        }
        assert!(stats.frames > 1000 && stats.errors() > 1000, "{stats:?}");
        assert!(
            stats.bad_type > 0
                && stats.bad_length > 0
                && stats.bad_offset > 0
                && stats.truncated > 0,
            "{stats:?}"
        );
    }
}
