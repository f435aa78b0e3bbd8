//! Fault injection into NICs, for recovery tests and measurements: off unless the kernel was
//! booted with `faults=TOKEN`, and then only for requests carrying that token (console `fault`,
//! HTTP `POST /fault`). Refusals are counted.

use alloc::format;
use alloc::string::{String, ToString};
use core::sync::atomic::{AtomicU64, Ordering};

use tether_kcore::cmdline::Cmdline;
use tether_netstack::fault::{check_token, Fault, FaultError, FaultRequest};

/// Requests refused (injection off, wrong token).
pub static REFUSED: AtomicU64 = AtomicU64::new(0);
/// Faults injected.
pub static INJECTED: AtomicU64 = AtomicU64::new(0);

fn boot_token() -> Option<String> {
    let cmdline = Cmdline::parse(&crate::boot::state().cmdline).ok()?;
    cmdline.get("faults").map(ToString::to_string)
}

/// Why a request was not carried out.
pub enum Refusal {
    /// Injection is off, or the token is missing or wrong (counted in [`REFUSED`]).
    Forbidden(String),
    /// Unknown fault or interface, or the driver cannot do it.
    Invalid(String),
}

impl core::fmt::Display for Refusal {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Refusal::Forbidden(why) | Refusal::Invalid(why) => f.write_str(why),
        }
    }
}

/// Carries out `request`; returns a line for the requester. Every outcome is a trace record.
pub fn request(request: &FaultRequest<'_>) -> Result<String, Refusal> {
    let token = boot_token();
    if let Err(error) = check_token(token.as_deref(), request.token) {
        REFUSED.fetch_add(1, Ordering::Relaxed);
        log::warn!("fault injection: {error}");
        return Err(Refusal::Forbidden(error.to_string()));
    }
    let invalid = |e: FaultError<'_>| Refusal::Invalid(e.to_string());
    let fault = Fault::parse(request.fault).map_err(invalid)?;
    let nic = super::interfaces()
        .into_iter()
        .find(|n| n.name == request.interface)
        .ok_or_else(|| invalid(FaultError::NoInterface(request.interface)))?;
    nic.inject(fault)
        .map_err(|why| invalid(FaultError::Unsupported(why)))?;
    INJECTED.fetch_add(1, Ordering::Relaxed);
    // Recovery measurements take their start time from this record.
    log::warn!(
        "{}: fault injected: {fault} at {} us",
        nic.name,
        crate::time::now_us()
    );
    Ok(format!("{}: {fault} injected", nic.name))
}
