//! Synchronisation primitives.

pub mod raw;
