//! The serial console's command shell, for an operator at a PC's COM port or QEMU's terminal.
//! COM1's receive interrupt (IRQ 4 through the I/O APIC) only wakes the `console` thread; the
//! thread reads the bytes and runs commands. More commands arrive with the network issues.

use alloc::string::String;
use core::sync::atomic::{AtomicU64, Ordering};

use tether_kcore::cmdline::LevelSpec;

use crate::arch::{ioapic, trap};
use crate::mem::{frames, heap};
use crate::sched::{self, Priority};
use crate::sync::Semaphore;
use crate::{console, cpu, time, trace};

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

fn execute(line: &str) {
    let mut words = line.split_whitespace();
    match words.next() {
        None => {}
        Some("help") => kprintln!(
            "commands: help | threads | cpus | mem | ifconfig | usb | pipes | trace [N] | log [SPEC] | uptime | ping ADDR [MS [N]] | ping stop | fault TOKEN IFACE KIND\n  log SPEC sets console levels, e.g. `log warn,sched=debug`\n  fault (needs faults=TOKEN at boot): KIND is wedge, wedge-rx, stall, drop-irq:MS, fail-reset[:N] or reset"
        ),
        Some("threads") => {
            kprintln!("{:>4} {:<16} {:<9} {:<8} {:>3} {:>12}", "id", "name", "priority", "state", "cpu", "cpu time ms");
            for t in sched::threads() {
                kprintln!(
                    "{:>4} {:<16} {:<9} {:<8} {:>3} {:>12}",
                    t.id,
                    t.name,
                    alloc::format!("{:?}", t.priority),
                    t.state,
                    t.cpu,
                    t.cpu_time_ns / 1_000_000
                );
            }
        }
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
        Some("mem") => kprintln!(
            "frames: {} free of {} ({} MiB free); heap: {} KiB in use of {} KiB; {} thread stacks pooled",
            frames::free_frames(),
            frames::total_frames(),
            (frames::free_frames() * 4096) >> 20,
            heap::bytes_in_use() / 1024,
            heap::bytes_owned() / 1024,
            crate::mem::stacks::pooled()
        ),
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
        Some("usb") => {
            for d in crate::usb::registry::devices() {
                kprintln!(
                    "{} {:<8} {:<9} {:04x}:{:04x} class {:02x} {:<24} {}",
                    d.controller,
                    d.port_path,
                    alloc::format!("{:?}", d.speed),
                    d.vendor_id,
                    d.product_id,
                    d.class,
                    d.product.as_deref().unwrap_or("-"),
                    d.driver.unwrap_or("no driver")
                );
            }
        }
        Some("pipes") => {
            kprintln!("{:<6} {:>4} {:>5} {:<9} {:>7} {:>9} {:>9} {:>6} {:>6} {:>12}", "ctrl", "slot", "ep", "kind", "halted", "submitted", "completed", "errors", "stalls", "bytes");
            for (name, controller) in crate::usb::controllers() {
                for p in controller.pipes() {
                    let c = p.counters;
                    kprintln!(
                        "{:<6} {:>4} {:>#5x} {:<9} {:>7} {:>9} {:>9} {:>6} {:>6} {:>12}",
                        name,
                        p.slot,
                        p.address,
                        alloc::format!("{:?}", p.kind),
                        p.halted,
                        c.submitted,
                        c.completed,
                        c.errors,
                        c.stalls,
                        c.bytes
                    );
                }
            }
        }
        Some("ifconfig") => {
            for nic in crate::net::interfaces() {
                let c = &nic.counters;
                let m = nic.mac;
                kprintln!(
                    "{}: mac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} carrier {}\n  rx {} frames {} bytes, {} dropped (queue full)\n  tx {} frames {} bytes, {} dropped",
                    nic.name, m[0], m[1], m[2], m[3], m[4], m[5],
                    if nic.carrier.load(Ordering::Relaxed) { "up" } else { "down" },
                    c.rx_frames.load(Ordering::Relaxed), c.rx_bytes.load(Ordering::Relaxed), c.rx_dropped_queue_full.load(Ordering::Relaxed),
                    c.tx_frames.load(Ordering::Relaxed), c.tx_bytes.load(Ordering::Relaxed), c.tx_dropped.load(Ordering::Relaxed)
                );
            }
        }
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
        Some("uptime") => kprintln!("{} ms (booted by {})", time::now_ns() / 1_000_000, crate::boot::state().loader),
        Some(other) => kprintln!("unknown command '{other}' (try help)"),
    }
}
