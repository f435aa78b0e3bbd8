//! USB core: descriptors, control requests, driver matching, speeds.
//!
//! Hardware-free and host-tested: everything here is pure data handling over
//! untrusted bytes from devices.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod cdc;
pub mod descriptor;
pub mod device;
pub mod enumerate;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod host;
pub mod hub;
pub mod matching;
pub mod request;
pub mod rndis;
pub mod rndis_channel;
pub mod speed;

#[cfg(test)]
mod tests;
