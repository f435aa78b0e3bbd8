//! Hardware-free xHCI ring layer for Tether.
//!
//! * [`dma`]: the narrow DMA-memory trait the kernel implements ([`dma::DmaMemory`]).
//! * [`ring`]: producer rings ([`ring::TransferRing`], [`ring::CommandRing`]).
//! * [`event`]: the consumer [`event::EventRing`] with its ERST and decoded [`event::Event`]s.
//! * [`completion`]: every completion code mapped to a named [`completion::UsbError`].
//! * [`context`]: Input Contexts for Address Device / Configure Endpoint (32- and 64-byte).
//! * [`controller`]: the controller driver (bring-up, commands, ports, EP0) behind
//!   `tether_usb::host::HostController`.
//! * [`pipe`]: bulk/interrupt pipes with stall semantics, transfer buffers and handles.
//! * [`port`]: Supported Protocol capabilities, BIOS handoff, PORTSC write rules.
//! * `fake` (tests, or feature `fake`): `FakeDma` and a `FakeController` that consumes rings
//!   like hardware does.
//!
//! TRB, completion-code and context layouts come from the `xhci` crate; the few layouts it lacks
//! are written here with a comment saying why.
#![no_std]
#![deny(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod completion;
pub mod context;
pub mod controller;
pub mod dma;
pub mod event;
#[cfg(any(test, feature = "fake"))]
pub mod fake;
pub mod pipe;
pub mod port;
pub mod ring;

pub use xhci;

#[cfg(test)]
mod hw_tests;
#[cfg(test)]
mod tests;
