//! The serial console's command shell, for an operator at a PC's COM port or QEMU's terminal.
//! COM1's receive interrupt (IRQ 4 through the I/O APIC) only wakes the `console` thread; the
//! thread reads the bytes and runs commands. More commands arrive with the network issues.

use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};

use tether_kcore::cmdline::LevelSpec;

use crate::arch::{ioapic, trap};
use crate::sched::{self, Priority};
use crate::sync::Semaphore;
use crate::{console, cpu, status, trace};

static INPUT: Semaphore = Semaphore::new(0);
static IRQS: AtomicU64 = AtomicU64::new(0);

fn com1_interrupt(_vector: u8) {
    IRQS.fetch_add(1, Ordering::Relaxed);
    INPUT.up();
}

/// Routes COM1's interrupt and starts the console thread.
pub fn start() {
    let irq = crate::boot::isa_irq(4);
    let vector = ioapic::GSI_VECTOR_BASE + irq.gsi as u8;
    trap::set_handler(vector, com1_interrupt);
    if let Err(error) = ioapic::route(
        irq.gsi,
        vector,
        cpu::this().apic_id,
        irq.active_low,
        irq.level_triggered,
    ) {
        log::warn!("console: no interrupt for COM1 ({error}); console input disabled");
        return;
    }
    console::enable_receive_interrupt();
    sched::Spawn::new("console")
        .priority(Priority::Driver)
        .start(run);
}

fn run() {
    let mut line = String::new();
    loop {
        INPUT.down();
        while let Some(byte) = console::try_read_byte() {
            match byte {
                b'\r' | b'\n' => {
                    kprintln!();
                    execute(line.trim());
                    line.clear();
                    kprint!("tether> ");
                }
                0x08 | 0x7F if line.pop().is_some() => kprint!("\x08 \x08"),
                0x20..=0x7E if line.len() < 256 => {
                    line.push(byte as char);
                    kprint!("{}", byte as char);
                }
                _ => {}
            }
        }
    }
}

/// Prints a report from [`status`] (the same text the HTTP status page shows).
fn print(report: status::Report) {
    let mut text = String::new();
    report(&mut text);
    console::write_str(&text);
}

fn execute(line: &str) {
    let mut words = line.split_whitespace();
    match words.next() {
        None => {}
        Some("help") => kprintln!(
            "commands: help | threads | cpus | mem | ifconfig | counters | virtio | usb | pipes | trace [N] | log [SPEC] | uptime | ping ADDR [MS [N]] | ping stop | fault TOKEN IFACE KIND\n  log SPEC sets console levels, e.g. `log warn,sched=debug`\n  fault (needs faults=TOKEN at boot): KIND is wedge, wedge-rx, stall, drop-irq:MS, fail-reset[:N] or reset"
        ),
        Some("threads") => print(status::write_threads),
        Some("cpus") => {
            for c in (0..cpu::count()).filter_map(cpu::get) {
                kprintln!(
                    "cpu{} apic {} online {} idle {} queued {} switches {}",
                    c.index,
                    c.apic_id,
                    c.online.load(Ordering::Relaxed),
                    c.sched.is_idle(),
                    c.sched.queued(),
                    c.sched.switches.load(Ordering::Relaxed)
                );
            }
            kprintln!("spurious interrupts {}, console interrupts {}", trap::spurious_count(), IRQS.load(Ordering::Relaxed));
        }
        Some("mem") => print(status::write_mem),
        Some("trace") => {
            let n = words.next().and_then(|w| w.parse().ok()).unwrap_or(50);
            let (len, overwritten) = trace::ring_stats();
            console::write_str(&trace::ring_text(n));
            kprintln!("({len} records in the ring, {overwritten} overwritten)");
        }
        Some("log") => match words.next() {
            None => kprintln!("log={}", trace::levels_text()),
            Some(spec) => match LevelSpec::parse(spec) {
                Ok(spec) => trace::set_levels(spec),
                Err(error) => kprintln!("log: {error}"),
            },
        },
        Some("usb") => print(status::write_usb_devices),
        Some("pipes") => print(status::write_pipe_counters),
        Some("ifconfig") => print(status::write_interfaces),
        Some("counters") => print(status::write_counters),
        Some("ping") => match (words.next(), words.next(), words.next()) {
            (Some("stop"), None, None) => crate::net::ping::start(None),
            (Some(target), interval, count) => {
                let target = crate::net::parse_ipv4(target);
                let interval_ms = interval.map_or(Some(1000), |i| i.parse::<u64>().ok().filter(|ms| (10..=60_000).contains(ms)));
                let count = match count {
                    None => Some(None),
                    Some(c) => c.parse::<u32>().ok().filter(|c| *c > 0).map(Some),
                };
                match (target, interval_ms, count) {
                    (Some(target), Some(interval_ms), Some(count)) => {
                        crate::net::ping::start(Some(crate::net::ping::PingRequest { target, interval_ms, count }))
                    }
                    _ => kprintln!("usage: ping A.B.C.D [INTERVAL_MS 10-60000 [COUNT]] | ping stop"),
                }
            }
            _ => kprintln!("usage: ping A.B.C.D [INTERVAL_MS [COUNT]] | ping stop"),
        },
        Some("fault") => {
            let rest = words.collect::<alloc::vec::Vec<_>>().join(" ");
            match tether_netstack::fault::FaultRequest::from_words(&rest) {
                None => kprintln!("usage: fault TOKEN IFACE wedge|wedge-rx|stall|drop-irq:MS|fail-reset[:N]|reset"),
                Some(request) => match crate::net::fault::request(&request) {
                    Ok(done) => kprintln!("{done}"),
                    Err(error) => kprintln!("fault: {error}"),
                },
            }
        }
        Some("virtio") => {
            for device in crate::virtio::report() {
                kprintln!("{device}");
            }
        }
        Some("uptime") => print(status::write_uptime),
        Some(other) => kprintln!("unknown command '{other}' (try help)"),
    }
}
