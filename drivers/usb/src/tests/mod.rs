//! Host tests. Descriptor bytes are built by hand from the USB/CDC layouts.

mod descriptor;
mod enumerate;
mod fuzz;
mod hub;
mod matching;
mod qemu;
mod request;
mod rndis_channel;
pub(crate) mod rndis_device;
mod rndis_function;
mod speed;

// The descriptor builders live in `crate::fake::blobs` so other crates' tests (feature
// `fake`) can use them too.
pub use crate::fake::blobs::*;
