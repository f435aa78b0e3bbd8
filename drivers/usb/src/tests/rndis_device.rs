//! RNDIS messages as a device sends them (QEMU 7.2 usb-net's layouts), for the message
//! parsers' tests in `rndis.rs` and the control channel's in `rndis_channel.rs`.

use alloc::vec::Vec;

use crate::rndis::*;

pub fn words(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|w| w.to_le_bytes()).collect()
}

pub fn le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// INIT_CMPLT exactly as QEMU 7.2 usb-net builds it.
pub fn init_cmplt(id: u32, status: u32) -> Vec<u8> {
    words(&[
        INITIALIZE_CMPLT,
        52,
        id,
        status,
        1,    // MajorVersion
        0,    // MinorVersion
        1,    // DeviceFlags: RNDIS_DF_CONNECTIONLESS
        0,    // Medium 802.3
        1,    // MaxPacketsPerTransfer
        1580, // MaxTransferSize = 1514 + 44 + 22
        0,    // PacketAlignmentFactor
        0,    // AFListOffset
        0,    // AFListSize
    ])
}

/// QUERY_CMPLT as QEMU builds it: offset 16 from RequestId when there is data, else 0.
pub fn query_cmplt(id: u32, status: u32, info: &[u8]) -> Vec<u8> {
    let offset = if info.is_empty() { 0 } else { 16 };
    let mut v = words(&[
        QUERY_CMPLT,
        (24 + info.len()) as u32,
        id,
        status,
        info.len() as u32,
        offset,
    ]);
    v.extend_from_slice(info);
    v
}

pub fn set_cmplt(id: u32, status: u32) -> Vec<u8> {
    words(&[SET_CMPLT, 16, id, status])
}

pub fn reset_cmplt(status: u32, addressing_reset: u32) -> Vec<u8> {
    words(&[RESET_CMPLT, 16, status, addressing_reset])
}

pub fn indicate(status: u32, buf: &[u8]) -> Vec<u8> {
    let offset = if buf.is_empty() { 0 } else { 12 };
    let mut v = words(&[
        INDICATE_STATUS_MSG,
        (20 + buf.len()) as u32,
        status,
        buf.len() as u32,
        offset,
    ]);
    v.extend_from_slice(buf);
    v
}

pub fn keepalive(id: u32) -> Vec<u8> {
    words(&[KEEPALIVE_MSG, 12, id])
}
