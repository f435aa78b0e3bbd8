//! smoltcp glue, addressing and TCP services (filled by the netstack issue).
#![no_std]
#![forbid(unsafe_code)]
