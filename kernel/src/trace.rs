//! The trace ring and the `log` facade. Every record at or below the ring's level goes into a
//! fixed-size circular buffer (time, CPU, thread, level, subsystem, message); the serial
//! console shows what the per-subsystem `log=` spec lets through. The ring is readable from the
//! console, over HTTP (`/trace`), and is dumped on panic.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use tether_kcore::cmdline::LevelSpec;
use tether_kcore::level::Level;
use tether_kcore::trace::{Record, TraceRing};

use crate::sync::raw::RawSpinLock;

const RING_RECORDS: usize = 4096;

static RING: RawSpinLock<Option<TraceRing>> = RawSpinLock::new(None);
static CONSOLE_LEVELS: RawSpinLock<Option<LevelSpec>> = RawSpinLock::new(None);
static RING_LEVEL: core::sync::atomic::AtomicU8 =
    core::sync::atomic::AtomicU8::new(Level::Debug as u8);

struct Logger;
static LOGGER: Logger = Logger;

fn to_level(level: log::Level) -> Level {
    match level {
        log::Level::Error => Level::Error,
        log::Level::Warn => Level::Warn,
        log::Level::Info => Level::Info,
        log::Level::Debug => Level::Debug,
        log::Level::Trace => Level::Trace,
    }
}

fn to_filter(level: Level) -> log::LevelFilter {
    match level {
        Level::Error => log::LevelFilter::Error,
        Level::Warn => log::LevelFilter::Warn,
        Level::Info => log::LevelFilter::Info,
        Level::Debug => log::LevelFilter::Debug,
        Level::Trace => log::LevelFilter::Trace,
    }
}

/// `tether_kernel::sync::checker` -> `sync::checker`; explicit targets pass unchanged.
fn subsystem(target: &str) -> &str {
    target.strip_prefix("tether_kernel::").unwrap_or(target)
}

impl log::Log for Logger {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = to_level(record.level());
        let subsystem = subsystem(record.target());
        let now = crate::time::now_ns();
        let (cpu, thread_id, thread_name) = match crate::cpu::try_this() {
            Some(cpu) if crate::sched::started() => {
                let t = crate::sched::current_ref();
                (cpu.index as u16, t.id as u32, t.name())
            }
            Some(cpu) => (cpu.index as u16, 0, "boot"),
            None => (0, 0, "boot"),
        };
        if level as u8 <= RING_LEVEL.load(core::sync::atomic::Ordering::Relaxed) {
            if let Some(ring) = RING.lock().as_mut() {
                ring.push(
                    now,
                    cpu,
                    thread_id,
                    thread_name,
                    level,
                    subsystem,
                    *record.args(),
                );
            }
        }
        let show = CONSOLE_LEVELS
            .lock()
            .as_ref()
            .map_or(level <= Level::Info, |spec| {
                level <= spec.level_for(subsystem)
            });
        if show {
            let micros = now / 1000;
            kprintln!(
                "[{:>5}.{:06}] {} {}: {}",
                micros / 1_000_000,
                micros % 1_000_000,
                level.tag(),
                subsystem,
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

pub fn init() {
    *RING.lock() = Some(TraceRing::new(RING_RECORDS));
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Debug);
}

/// Applies `log=` from the command line: console levels per subsystem; the ring keeps at least
/// debug, or more if the spec asks for trace anywhere.
pub fn set_levels(spec: LevelSpec) {
    let most = spec.max_level().max(Level::Debug);
    RING_LEVEL.store(most as u8, core::sync::atomic::Ordering::Relaxed);
    log::set_max_level(to_filter(most));
    *CONSOLE_LEVELS.lock() = Some(spec);
}

pub fn levels_text() -> String {
    CONSOLE_LEVELS
        .lock()
        .as_ref()
        .map_or_else(|| String::from("info"), |s| alloc::format!("{s}"))
}

/// The ring as text, oldest first (the console's `trace` command, HTTP `/trace`).
pub fn ring_text(max_records: usize) -> String {
    let mut out = String::new();
    if let Some(ring) = RING.lock().as_ref() {
        let skip = ring.len().saturating_sub(max_records);
        for record in ring.iter().skip(skip) {
            let _ = record.write_line(&mut out);
            out.push('\n');
        }
    }
    out
}

/// Seq range of the records the ring holds now: oldest held, and the next to be written.
pub fn ring_span() -> (u64, u64) {
    RING.lock()
        .as_ref()
        .map_or((0, 0), |r| (r.oldest_seq(), r.next_seq()))
}

/// Copies up to `max` records with seq >= `seq`, oldest first, into `out`, for a reader that
/// formats them later (HTTP `/trace` streams the ring this way). Only copies under the lock:
/// `out` is grown before it is taken, and nothing is formatted while other CPUs wait to log.
pub fn copy_records_since(seq: u64, max: usize, out: &mut Vec<Record>) {
    out.reserve(max);
    if let Some(ring) = RING.lock().as_ref() {
        out.extend(ring.since(seq).take(max).copied());
    }
}

pub fn ring_stats() -> (usize, u64) {
    RING.lock()
        .as_ref()
        .map_or((0, 0), |r| (r.len(), r.overwritten()))
}

/// Never blocks: if another CPU held the ring when it was stopped, the dump is skipped.
pub fn dump_tail_for_panic(max_records: usize) {
    let Some(guard) = RING.try_lock() else {
        kprintln!("(trace ring busy; not dumped)");
        return;
    };
    if let Some(ring) = guard.as_ref() {
        kprintln!("--- last {} trace records ---", max_records.min(ring.len()));
        let skip = ring.len().saturating_sub(max_records);
        for record in ring.iter().skip(skip) {
            // Formatted on the stack: a stopped CPU may hold the heap's lock.
            let mut line = StackLine {
                bytes: [0; 256],
                len: 0,
            };
            let _ = record.write_line(&mut line);
            crate::console::write_str(
                core::str::from_utf8(&line.bytes[..line.len]).unwrap_or("(unprintable record)"),
            );
            crate::console::write_str("\n");
        }
    }
}

/// A line buffer that needs no heap; text past its end is cut (at a character boundary).
struct StackLine {
    bytes: [u8; 256],
    len: usize,
}

impl Write for StackLine {
    fn write_str(&mut self, text: &str) -> core::fmt::Result {
        for c in text.chars() {
            let mut utf8 = [0u8; 4];
            let encoded = c.encode_utf8(&mut utf8).as_bytes();
            if self.len + encoded.len() > self.bytes.len() {
                break;
            }
            self.bytes[self.len..self.len + encoded.len()].copy_from_slice(encoded);
            self.len += encoded.len();
        }
        Ok(())
    }
}
