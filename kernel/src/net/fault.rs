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

/// Carries out `request`; returns a line for the requester. Every outcome is a trace record.
pub fn request(request: &FaultRequest<'_>) -> Result<String, String> {
    let token = boot_token();
    if let Err(error) = check_token(token.as_deref(), request.token) {
        REFUSED.fetch_add(1, Ordering::Relaxed);
        log::warn!("fault injection: {error}");
        return Err(error.to_string());
    }
    let fault = Fault::parse(request.fault).map_err(|e| e.to_string())?;
    let nic = super::interfaces()
        .into_iter()
        .find(|n| n.name == request.interface)
        .ok_or_else(|| FaultError::NoInterface(request.interface).to_string())?;
    nic.inject(fault)
        .map_err(|why| FaultError::Unsupported(why).to_string())?;
    INJECTED.fetch_add(1, Ordering::Relaxed);
    // Recovery measurements take their start time from this record.
    log::warn!(
        "{}: fault injected: {fault} at {} us",
        nic.name,
        crate::time::now_us()
    );
    Ok(format!("{}: {fault} injected", nic.name))
}
