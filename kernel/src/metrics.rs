//! `/metrics`: the kernel's counters and gauges in the Prometheus text format. The interface
//! and pipe counters come from the same lists as the console's `counters` table
//! ([`crate::status::INTERFACE_COUNTERS`], [`crate::status::PIPE_COUNTERS`]).

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use tether_netstack::http::{write_family, write_sample, MetricType, MetricValue};

use crate::mem::{frames, heap};
use crate::net::Nic;
use crate::status::{self, INTERFACE_COUNTERS, PIPE_COUNTERS};
use crate::{cpu, sched, time};

/// A family with one unlabelled sample.
fn single(out: &mut String, name: &str, help: &str, kind: MetricType, value: MetricValue) {
    write_family(out, name, help, kind);
    write_sample(out, name, &[], value);
}

/// Every metric, rendered now.
pub fn render() -> String {
    let mut out = String::new();
    single(
        &mut out,
        "tether_uptime_seconds",
        "Time since the kernel started.",
        MetricType::Gauge,
        (time::now_ns() as f64 / 1e9).into(),
    );
    write_interfaces(&mut out);
    write_usb(&mut out);
    write_threads(&mut out);
    write_memory(&mut out);
    write_trace(&mut out);
    write_faults(&mut out);
    crate::net::http::write_metrics(&mut out);
    out
}

fn write_interfaces(out: &mut String) {
    let interfaces = crate::net::interfaces();
    let name = "tether_interface_carrier";
    write_family(
        out,
        name,
        "1 when the interface's link is up.",
        MetricType::Gauge,
    );
    for nic in &interfaces {
        let up = nic.carrier.load(Ordering::Relaxed);
        write_sample(out, name, &[("interface", &nic.name)], u64::from(up).into());
    }
    let name = "tether_interface_device_present";
    write_family(
        out,
        name,
        "1 while a device drives the interface (0: unplugged, waiting for it).",
        MetricType::Gauge,
    );
    for nic in &interfaces {
        let linked = u64::from(nic.has_link());
        write_sample(out, name, &[("interface", &nic.name)], linked.into());
    }
    let name = "tether_interface_tx_in_flight";
    write_family(
        out,
        name,
        "Frames handed to the device and not completed yet (the TX watchdog's view).",
        MetricType::Gauge,
    );
    for nic in &interfaces {
        let queued = nic.tx_progress.activity().queued;
        write_sample(out, name, &[("interface", &nic.name)], queued.into());
    }
    for (name, help, read) in [
        (
            "tether_interface_tx_queue_capacity",
            "Transfers the driver keeps in flight at most (txqueue=).",
            (|nic: &Nic| nic.tx_queue_capacity.load(Ordering::Relaxed) as u64) as fn(&Nic) -> u64,
        ),
        (
            "tether_interface_reset_failing",
            "1 while the last device reset failed and is being retried with backoff.",
            |nic: &Nic| u64::from(nic.reset_failing.load(Ordering::Relaxed)),
        ),
        (
            "tether_interface_watchdog_timer",
            "The TX watchdog's timer (progress: ticks since work was missed).",
            |nic: &Nic| u64::from(nic.tx_progress.timer()),
        ),
    ] {
        write_family(out, name, help, MetricType::Gauge);
        for nic in &interfaces {
            write_sample(out, name, &[("interface", &nic.name)], read(nic).into());
        }
    }
    let name = "tether_interface_info";
    write_family(
        out,
        name,
        "Interface MAC and IPv4 address (always 1).",
        MetricType::Gauge,
    );
    for nic in &interfaces {
        let mac = status::mac_text(nic.mac);
        let address = match *nic.address.lock() {
            Some((a, _)) => format!("{}/{}", a.ip, a.prefix),
            None => String::new(),
        };
        let labels = [
            ("interface", nic.name.as_str()),
            ("mac", &mac),
            ("address", &address),
        ];
        write_sample(out, name, &labels, 1u64.into());
    }
    for counter in INTERFACE_COUNTERS {
        let name = format!("tether_interface_{}_total", counter.name);
        write_family(out, &name, counter.help, MetricType::Counter);
        for nic in &interfaces {
            let value = (counter.read)(&nic.counters);
            write_sample(out, &name, &[("interface", &nic.name)], value.into());
        }
    }
}

fn write_usb(out: &mut String) {
    single(
        out,
        "tether_usb_devices",
        "USB devices attached (hubs included).",
        MetricType::Gauge,
        crate::usb::registry::devices().len().into(),
    );
    let pipes = status::pipes();
    let labels: Vec<[(&str, String); 4]> = pipes
        .iter()
        .map(|(controller, pipe)| {
            [
                ("controller", controller.clone()),
                ("slot", format!("{}", pipe.slot)),
                ("endpoint", format!("{:#04x}", pipe.address)),
                ("kind", status::pipe_kind(pipe)),
            ]
        })
        .collect();
    let name = "tether_usb_pipe_halted";
    write_family(
        out,
        name,
        "1 while the pipe is halted (until clear_halt).",
        MetricType::Gauge,
    );
    for ((_, pipe), l) in pipes.iter().zip(&labels) {
        write_sample(out, name, &label_refs(l), u64::from(pipe.halted).into());
    }
    for counter in PIPE_COUNTERS {
        let name = format!("tether_usb_pipe_{}_total", counter.name);
        write_family(out, &name, counter.help, MetricType::Counter);
        for ((_, pipe), l) in pipes.iter().zip(&labels) {
            let value = (counter.read)(&pipe.counters);
            write_sample(out, &name, &label_refs(l), value.into());
        }
    }
}

fn label_refs<'a>(labels: &'a [(&'static str, String); 4]) -> [(&'static str, &'a str); 4] {
    [0, 1, 2, 3].map(|i| (labels[i].0, labels[i].1.as_str()))
}

fn write_threads(out: &mut String) {
    let threads = sched::threads();
    let name = "tether_threads";
    write_family(out, name, "Threads by state.", MetricType::Gauge);
    for state in ["running", "ready", "blocked", "exited"] {
        let count = threads.iter().filter(|t| t.state == state).count();
        write_sample(out, name, &[("state", state)], count.into());
    }
    let name = "tether_thread_cpu_seconds_total";
    write_family(out, name, "CPU time used per thread.", MetricType::Counter);
    for t in &threads {
        let id = format!("{}", t.id);
        let labels = [("id", id.as_str()), ("thread", t.name.as_str())];
        write_sample(out, name, &labels, (t.cpu_time_ns as f64 / 1e9).into());
    }
    let name = "tether_cpu_context_switches_total";
    write_family(out, name, "Context switches per CPU.", MetricType::Counter);
    for c in (0..cpu::count()).filter_map(cpu::get) {
        let index = format!("{}", c.index);
        let switches = c.sched.switches.load(Ordering::Relaxed);
        write_sample(out, name, &[("cpu", &index)], switches.into());
    }
}

fn write_memory(out: &mut String) {
    let gauges: [(&str, &str, u64); 4] = [
        (
            "tether_memory_frames_free",
            "Free 4 KiB frames.",
            frames::free_frames() as u64,
        ),
        (
            "tether_memory_frames_total",
            "4 KiB frames the allocator manages.",
            frames::total_frames() as u64,
        ),
        (
            "tether_memory_heap_used_bytes",
            "Heap bytes allocated.",
            heap::bytes_in_use() as u64,
        ),
        (
            "tether_memory_heap_owned_bytes",
            "Bytes the heap has taken from the frame allocator.",
            heap::bytes_owned() as u64,
        ),
    ];
    for (name, help, value) in gauges {
        single(out, name, help, MetricType::Gauge, value.into());
    }
    single(
        out,
        "tether_memory_stacks_pooled",
        "Finished threads' stacks kept for reuse.",
        MetricType::Gauge,
        crate::mem::stacks::pooled().into(),
    );
}

fn write_faults(out: &mut String) {
    use crate::net::fault::{INJECTED, REFUSED};
    single(
        out,
        "tether_faults_injected_total",
        "Faults injected into NICs (console `fault`, needs faults=TOKEN).",
        MetricType::Counter,
        INJECTED.load(Ordering::Relaxed).into(),
    );
    single(
        out,
        "tether_fault_requests_refused_total",
        "Fault injection requests refused (injection off or a wrong token).",
        MetricType::Counter,
        REFUSED.load(Ordering::Relaxed).into(),
    );
}

fn write_trace(out: &mut String) {
    let (records, overwritten) = crate::trace::ring_stats();
    single(
        out,
        "tether_trace_records",
        "Records in the trace ring.",
        MetricType::Gauge,
        records.into(),
    );
    single(
        out,
        "tether_trace_overwritten_total",
        "Trace records lost to the ring's wraparound.",
        MetricType::Counter,
        overwritten.into(),
    );
}
