//! xHCI ring logic (being written).
#![no_std]
