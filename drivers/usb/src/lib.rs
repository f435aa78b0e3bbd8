//! USB core: descriptors, device model, driver matching (being written).
#![no_std]
#![forbid(unsafe_code)]
