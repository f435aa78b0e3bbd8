//! The serial console (COM1). Output goes through one raw spin lock so lines from different CPUs
//! do not interleave; the panic path breaks the lock rather than deadlock.

use core::fmt::{self, Write};

use uart_16550::SerialPort;

use crate::sync::raw::RawSpinLock;

static COM1: RawSpinLock<Option<SerialPort>> = RawSpinLock::new(None);

pub fn init() {
    // SAFETY: 0x3F8 is COM1's standard I/O base; nothing else in the kernel touches those ports.
    let mut port = unsafe { SerialPort::new(0x3F8) };
    port.init();
    *COM1.lock() = Some(port);
}

pub fn write_fmt(args: fmt::Arguments<'_>) {
    let mut guard = COM1.lock();
    if let Some(port) = guard.as_mut() {
        let _ = port.write_fmt(args);
    }
}

pub fn write_str(text: &str) {
    let mut guard = COM1.lock();
    if let Some(port) = guard.as_mut() {
        let _ = port.write_str(text);
    }
}

/// Non-blocking read of one byte typed on the console.
pub fn try_read_byte() -> Option<u8> {
    let mut guard = COM1.lock();
    guard.as_mut().and_then(|port| port.try_receive().ok())
}

/// Asks COM1 to interrupt when a byte arrives (IER bit 0).
pub fn enable_receive_interrupt() {
    let _guard = COM1.lock();
    // SAFETY: COM1's interrupt-enable register (base + 1) and modem control (base + 4, OUT2
    // gates the IRQ line on PCs); the lock keeps other console users out meanwhile.
    unsafe {
        x86_64::instructions::port::Port::<u8>::new(0x3F9).write(0x01);
        x86_64::instructions::port::Port::<u8>::new(0x3FC).write(0x0B);
    }
}

/// For the panic path: make sure the console can be written even if its lock was held.
pub fn break_lock_for_panic() {
    // SAFETY: the panicking CPU has stopped the others (or is alone); whoever held the lock
    // will not run again.
    unsafe { COM1.force_unlock() };
}

#[macro_export]
macro_rules! kprintln {
    () => { $crate::console::write_str("\n") };
    ($($arg:tt)*) => {{
        $crate::console::write_fmt(format_args!("{}\n", format_args!($($arg)*)));
    }};
}

#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::console::write_fmt(format_args!($($arg)*)) };
}
