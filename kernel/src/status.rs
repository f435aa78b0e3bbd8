//! Text reports of the kernel's state, shared by the serial console and the HTTP status page,
//! and the counter lists that both `/metrics` and the console's `counters` table walk. One
//! producer per report, so the console, `GET /` and `/metrics` cannot drift apart.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::Ordering;

use tether_usb::device::{format_table, DeviceSummary};
use tether_xhci::pipe::{PipeCounters, PipeInfo};

use crate::mem::{frames, heap};
use crate::net::nic::{Nic, NicCounters};
use crate::{sched, time};

/// One counter of an object (an interface, a USB pipe): its name (a table column, and the
/// middle of the metric name), the help text `/metrics` gives, and how to read it.
pub struct Counter<T> {
    pub name: &'static str,
    pub help: &'static str,
    pub read: fn(&T) -> u64,
}

/// The counters of a network interface.
pub const INTERFACE_COUNTERS: &[Counter<NicCounters>] = &[
    Counter {
        name: "rx_frames",
        help: "Frames received and queued to the network stack.",
        read: |c| c.rx_frames.load(Ordering::Relaxed),
    },
    Counter {
        name: "rx_bytes",
        help: "Bytes of the frames received.",
        read: |c| c.rx_bytes.load(Ordering::Relaxed),
    },
    Counter {
        name: "rx_dropped",
        help: "Frames received but dropped because the receive queue was full.",
        read: |c| c.rx_dropped_queue_full.load(Ordering::Relaxed),
    },
    Counter {
        name: "rx_malformed",
        help: "Received messages dropped because their framing did not hold up (RNDIS).",
        read: |c| c.rx_malformed.load(Ordering::Relaxed),
    },
    Counter {
        name: "tx_frames",
        help: "Frames handed to the device for sending.",
        read: |c| c.tx_frames.load(Ordering::Relaxed),
    },
    Counter {
        name: "tx_bytes",
        help: "Bytes of the frames handed to the device.",
        read: |c| c.tx_bytes.load(Ordering::Relaxed),
    },
    Counter {
        name: "tx_dropped",
        help: "Frames the driver refused (transmit queue full, no buffer).",
        read: |c| c.tx_dropped.load(Ordering::Relaxed),
    },
    Counter {
        name: "tx_dropped_no_link",
        help: "Frames dropped because the interface had no device (unplugged).",
        read: |c| c.tx_dropped_no_link.load(Ordering::Relaxed),
    },
    Counter {
        name: "tx_requeued",
        help: "Frames a device reset took back and queued again.",
        read: |c| c.tx_requeued.load(Ordering::Relaxed),
    },
    Counter {
        name: "tx_dropped_reset",
        help: "Frames a device reset took back and dropped.",
        read: |c| c.tx_dropped_reset.load(Ordering::Relaxed),
    },
    Counter {
        name: "watchdog_fired",
        help: "Times the TX watchdog decided to reset the device.",
        read: |c| c.watchdog_fired.load(Ordering::Relaxed),
    },
    Counter {
        name: "resets",
        help: "Device resets completed.",
        read: |c| c.resets.load(Ordering::Relaxed),
    },
    Counter {
        name: "reset_failures",
        help: "Device reset attempts that failed.",
        read: |c| c.reset_failures.load(Ordering::Relaxed),
    },
    Counter {
        name: "links",
        help: "Times a device (re)bound to the interface.",
        read: |c| c.links.load(Ordering::Relaxed),
    },
    Counter {
        name: "stack_passes",
        help: "Passes of the interface's thread through the network stack and the services.",
        read: |c| c.stack_passes.load(Ordering::Relaxed),
    },
];

/// The counters of a USB pipe (tether_xhci's per-pipe counters).
pub const PIPE_COUNTERS: &[Counter<PipeCounters>] = &[
    Counter {
        name: "submitted",
        help: "Transfers accepted on the pipe.",
        read: |c| c.submitted,
    },
    Counter {
        name: "completed",
        help: "Transfers completed, successfully or not.",
        read: |c| c.completed,
    },
    Counter {
        name: "errors",
        help: "Transfers completed with an error (halted pipe, timeout, disconnect included).",
        read: |c| c.errors,
    },
    Counter {
        name: "stalls",
        help: "Stalls on the pipe, real or injected.",
        read: |c| c.stalls,
    },
    Counter {
        name: "bytes",
        help: "Bytes moved by successful transfers.",
        read: |c| c.bytes,
    },
    Counter {
        name: "clear_feature_rejected",
        help: "Halts cleared whose CLEAR_FEATURE(ENDPOINT_HALT) the device answered with a STALL.",
        read: |c| c.clear_feature_rejected,
    },
];

pub fn mac_text(mac: [u8; 6]) -> String {
    let m = mac;
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// `10.0.2.15/24 gateway 10.0.2.2 (DHCP lease)`, or `no address`.
pub fn address_text(nic: &Nic) -> String {
    match *nic.address.lock() {
        Some((a, how)) => match a.gateway {
            Some(gw) => format!("{}/{} gateway {gw} ({how})", a.ip, a.prefix),
            None => format!("{}/{} no gateway ({how})", a.ip, a.prefix),
        },
        None => String::from("no address"),
    }
}

/// Every USB pipe of every controller, with its controller's name.
pub fn pipes() -> Vec<(String, PipeInfo)> {
    crate::usb::controllers()
        .into_iter()
        .flat_map(|(name, controller)| {
            controller
                .pipes()
                .into_iter()
                .map(move |pipe| (name.clone(), pipe))
        })
        .collect()
}

/// A pipe's kind as a lowercase word (`bulk`, `interrupt`, `control`).
pub fn pipe_kind(pipe: &PipeInfo) -> String {
    format!("{:?}", pipe.kind).to_ascii_lowercase()
}

/// Columns padded to their widest cell; numeric columns (`right`) aligned right. Every line
/// ends with '\n'.
fn write_table(out: &mut String, header: &[&str], right: &[bool], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            let w = widths[i];
            if right.get(i).copied().unwrap_or(false) {
                let _ = write!(text, "{cell:>w$}  ");
            } else {
                let _ = write!(text, "{cell:<w$}  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// `uptime 12.345 s, booted by PVH`.
pub fn write_uptime(out: &mut String) {
    let ms = time::now_ns() / 1_000_000;
    let _ = writeln!(
        out,
        "uptime {}.{:03} s, booted by {}",
        ms / 1000,
        ms % 1000,
        crate::boot::state().loader
    );
}

/// Each interface: MAC, device, carrier, address, counters (the console's `ifconfig`).
pub fn write_interfaces(out: &mut String) {
    let interfaces = crate::net::interfaces();
    if interfaces.is_empty() {
        out.push_str("no network interfaces\n");
    }
    for nic in interfaces {
        let c = &nic.counters;
        let up = nic.carrier.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{}: mac {} {} carrier {}\n  inet {}\n  rx {} frames {} bytes, {} dropped (queue full), {} malformed\n  tx {} frames {} bytes, {} dropped",
            nic.name,
            mac_text(nic.mac),
            if nic.has_link() { "device present" } else { "no device" },
            if up { "up" } else { "down" },
            address_text(&nic),
            c.rx_frames.load(Ordering::Relaxed),
            c.rx_bytes.load(Ordering::Relaxed),
            c.rx_dropped_queue_full.load(Ordering::Relaxed),
            c.rx_malformed.load(Ordering::Relaxed),
            c.tx_frames.load(Ordering::Relaxed),
            c.tx_bytes.load(Ordering::Relaxed),
            c.tx_dropped.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "  tx queue {} frames in the device, {} transfers at most; watchdog {} (timer {})",
            nic.tx_progress.activity().queued,
            nic.tx_queue_capacity.load(Ordering::Relaxed),
            nic.tx_progress.policy(),
            nic.tx_progress.timer()
        );
        let _ = writeln!(
            out,
            "  resets {} ({} failed{}), watchdog fired {}, device bound {} times",
            c.resets.load(Ordering::Relaxed),
            c.reset_failures.load(Ordering::Relaxed),
            if nic.reset_failing.load(Ordering::Relaxed) {
                "; FAILING, retrying with backoff"
            } else {
                ""
            },
            c.watchdog_fired.load(Ordering::Relaxed),
            c.links.load(Ordering::Relaxed)
        );
    }
}

/// The USB device table as each controller logs it after boot, with the product string as
/// one more column (the console's `usb`).
pub fn write_usb_devices(out: &mut String) {
    let devices = crate::usb::registry::devices();
    let summaries: Vec<DeviceSummary> = devices
        .iter()
        .map(|d| DeviceSummary {
            // The registry's path is the one the controller logged; `new` would need the bus.
            port_path: d.port_path.clone(),
            ..DeviceSummary::new(&d.controller, 0, &d.access.device, d.driver)
        })
        .collect();
    let table = format_table(&summaries);
    let width = table.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    let products = core::iter::once("PRODUCT")
        .chain(devices.iter().map(|d| d.product.as_deref().unwrap_or("-")));
    for (line, product) in table.lines().zip(products) {
        let _ = writeln!(out, "{line:<width$}  {product}");
    }
}

/// The thread table (the console's `threads`).
pub fn write_threads(out: &mut String) {
    let rows: Vec<Vec<String>> = sched::threads()
        .into_iter()
        .map(|t| {
            alloc::vec![
                format!("{}", t.id),
                t.name,
                format!("{:?}", t.priority),
                String::from(t.state),
                format!("{}", t.cpu),
                format!("{}", t.cpu_time_ns / 1_000_000),
            ]
        })
        .collect();
    write_table(
        out,
        &["id", "name", "priority", "state", "cpu", "cpu time ms"],
        &[true, false, false, false, true, true],
        &rows,
    );
}

/// Frames, heap and pooled stacks in one line (the console's `mem`; the hotplug test parses
/// this line, see `tether_tests::protocol::parse_mem_line`).
pub fn write_mem(out: &mut String) {
    let (small_blocks, small_block_pages) = crate::mem::dma::small_block_usage();
    let _ = writeln!(
        out,
        "frames: {} free of {} ({} MiB free); heap: {} KiB in use of {} KiB; {} thread stacks pooled; DMA small blocks: {} in {} pages (by size 64..2048: {:?})",
        frames::free_frames(),
        frames::total_frames(),
        (frames::free_frames() * 4096) >> 20,
        heap::bytes_in_use() / 1024,
        heap::bytes_owned() / 1024,
        crate::mem::stacks::pooled(),
        small_blocks,
        small_block_pages,
        crate::mem::dma::small_blocks_by_class(),
    );
}

/// Interface counters, one row per interface, columns from [`INTERFACE_COUNTERS`].
pub fn write_interface_counters(out: &mut String) {
    let mut header = alloc::vec!["interface"];
    header.extend(INTERFACE_COUNTERS.iter().map(|c| c.name));
    let rows: Vec<Vec<String>> = crate::net::interfaces()
        .iter()
        .map(|nic| {
            let mut row = alloc::vec![nic.name.clone()];
            row.extend(
                INTERFACE_COUNTERS
                    .iter()
                    .map(|c| format!("{}", (c.read)(&nic.counters))),
            );
            row
        })
        .collect();
    let mut right = alloc::vec![false];
    right.extend(INTERFACE_COUNTERS.iter().map(|_| true));
    write_table(out, &header, &right, &rows);
}

/// Pipe counters, one row per pipe, columns from [`PIPE_COUNTERS`] (the console's `pipes`).
pub fn write_pipe_counters(out: &mut String) {
    let mut header = alloc::vec!["controller", "slot", "endpoint", "kind", "halted"];
    header.extend(PIPE_COUNTERS.iter().map(|c| c.name));
    let rows: Vec<Vec<String>> = pipes()
        .iter()
        .map(|(controller, pipe)| {
            let mut row = alloc::vec![
                controller.clone(),
                format!("{}", pipe.slot),
                format!("{:#04x}", pipe.address),
                pipe_kind(pipe),
                format!("{}", pipe.halted),
            ];
            row.extend(
                PIPE_COUNTERS
                    .iter()
                    .map(|c| format!("{}", (c.read)(&pipe.counters))),
            );
            row
        })
        .collect();
    let mut right = alloc::vec![false, true, false, false, false];
    right.extend(PIPE_COUNTERS.iter().map(|_| true));
    write_table(out, &header, &right, &rows);
}

/// The console's `counters`: interface counters, then pipe counters.
pub fn write_counters(out: &mut String) {
    write_interface_counters(out);
    out.push('\n');
    write_pipe_counters(out);
}

/// A report writer, as the console's commands and the status page's sections use them.
pub type Report = fn(&mut String);

/// The HTTP status page (`GET /`): every report above under a heading.
pub fn status_page() -> String {
    let mut out = String::from("Tether status\n");
    write_uptime(&mut out);
    let sections: [(&str, Report); 5] = [
        ("interfaces", write_interfaces),
        ("USB devices", write_usb_devices),
        ("threads", write_threads),
        ("USB pipes", write_pipe_counters),
        ("memory", write_mem),
    ];
    for (title, write) in sections {
        let _ = write!(out, "\n== {title}\n");
        write(&mut out);
    }
    out
}
