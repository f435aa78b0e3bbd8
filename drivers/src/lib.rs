//! USB host stack, class drivers and NIC drivers (filled by the USB issues).
#![no_std]
#![forbid(unsafe_code)]
