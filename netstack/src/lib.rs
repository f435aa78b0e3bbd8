//! smoltcp glue, addressing and TCP services. So far: building and recognising the probe frames
//! (ARP, ICMP echo) that the USB data-path tests use; the interface and services follow.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod addressing;
pub mod fault;
pub mod http;
pub mod iperf3;
pub mod offload;
pub mod probe;
pub mod services;
pub mod watchdog;

pub use smoltcp;
