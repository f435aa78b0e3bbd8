//! The host-driven hotplug test (`hotplug_cycles`): what it boots, what it does and how it is
//! judged. The runner (`tether-qemu`) drives QEMU through QMP; the rules are here.
//!
//! The machine has one `qemu-xhci` with one `usb-net` (`id=usbnet0`). After the kernel's ready
//! line and its `usb: attached ... 0525:a4a2` line, the runner asks the console for `mem`, then
//! repeats N times: `device_del usbnet0` (until QEMU's `DEVICE_DELETED` and the kernel's
//! `usb: detached ... 0525:a4a2`), `device_add usb-net,bus=xhci.0,netdev=n0,id=usbnet0` (until
//! `usb: attached ... 0525:a4a2`). Then `mem` again: the frame and heap counters must be back.

use crate::protocol::MemStats;
use std::time::Duration;

/// Test name, as printed in the results (`boot::hotplug_cycles`).
pub const NAME: &str = "hotplug_cycles";
/// Kernel command line: a normal boot (the USB stack enumerates, the console shell runs).
pub const CMDLINE: &str = "";
/// QEMU's id of the device unplugged and plugged back.
pub const DEVICE_ID: &str = "usbnet0";
/// QEMU driver of that device.
pub const DEVICE_DRIVER: &str = "usb-net";
/// Properties `device_add` gives it (the same as on the command line). The MAC is fixed, as a
/// real dongle's is: QEMU would otherwise give every new NIC the next address, and the kernel
/// keeps an unplugged interface for the device with its MAC.
pub const DEVICE_PROPS: &[(&str, &str)] = &[
    ("bus", "xhci.0"),
    ("netdev", "n0"),
    ("id", DEVICE_ID),
    ("mac", "52:54:00:12:34:56"),
];
/// QEMU arguments on top of the base machine.
pub const QEMU_ARGS: &[&str] = &[
    "-device",
    "qemu-xhci,id=xhci",
    "-netdev",
    "user,id=n0",
    "-device",
    "usb-net,bus=xhci.0,netdev=n0,id=usbnet0,mac=52:54:00:12:34:56",
];
/// USB vendor and product ID of QEMU's usb-net.
pub const VID_PID: (u16, u16) = (0x0525, 0xa4a2);

/// What the kernel's CDC-ECM driver prints once its receive transfers are queued: each unplug
/// happens only after it, so every cycle pulls the device out from under transfers in flight.
pub const DRIVER_RECEIVING: &str = "cdc-ecm: receiving";
/// Unplug/replug cycles by default (issue 3 asks for 100 in a row).
pub const DEFAULT_CYCLES: u32 = 100;
/// Environment variable overriding the cycle count (`TETHER_HOTPLUG_CYCLES=5` for a quick run).
pub const CYCLES_ENV: &str = "TETHER_HOTPLUG_CYCLES";
/// How long the kernel gets to the ready line and the first attach.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long each step (one QMP command and the kernel's line, one `mem` reply) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Heap growth allowed over all cycles, in KiB. Not a leak allowance per cycle: the kernel's
/// log and trace rings and the device registry may grow once to their high-water mark during
/// the first cycles (a ring buffer's backing, a longer name string); a leak of even one small
/// allocation per cycle over 100 cycles still shows. Frames get no slack: DMA rings, contexts
/// and buffers come from frames, and every one must come back.
pub const HEAP_SLACK_KIB: u64 = 64;

/// The cycle count: [`CYCLES_ENV`]'s value when set and not empty, else [`DEFAULT_CYCLES`].
pub fn cycles(env_value: Option<&str>) -> Result<u32, String> {
    match env_value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(DEFAULT_CYCLES),
        Some(text) => match text.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{CYCLES_ENV}={text:?}: expected a positive number")),
        },
    }
}

/// Judges the memory counters after the cycles against those after the first attach: every
/// frame back, the heap within [`HEAP_SLACK_KIB`].
pub fn judge_leaks(before: &MemStats, after: &MemStats) -> Result<(), String> {
    let mut problems = Vec::new();
    // Small DMA blocks of one size share 4 KiB pages, so the same blocks in use can occupy a
    // page more or less (one that outlives a replug lands wherever there is room). Frames that
    // differ by exactly that, with the same blocks in use, are placement, not a leak.
    let placement = match (before.dma_small, after.dma_small) {
        (Some((blocks_before, pages_before)), Some((blocks_after, pages_after))) => {
            if blocks_after != blocks_before {
                problems.push(format!(
                    "small DMA blocks in use {blocks_before} -> {blocks_after}"
                ));
            }
            (blocks_after == blocks_before).then(|| pages_after as i64 - pages_before as i64)
        }
        _ => None,
    };
    let lost = before.frames_free as i64 - after.frames_free as i64;
    if lost != 0 && placement != Some(lost) {
        let dma = match (before.dma_small, after.dma_small) {
            (Some((b0, p0)), Some((b1, p1))) => {
                format!("; small DMA blocks {b0} in {p0} pages -> {b1} in {p1}")
            }
            _ => String::new(),
        };
        problems.push(format!(
            "frames free {} -> {} ({lost:+} frames not returned){dma}",
            before.frames_free, after.frames_free
        ));
    }
    if after.heap_used_kib > before.heap_used_kib + HEAP_SLACK_KIB {
        problems.push(format!(
            "heap in use {} KiB -> {} KiB (more than {HEAP_SLACK_KIB} KiB growth)",
            before.heap_used_kib, after.heap_used_kib
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("leak: {}", problems.join("; ")))
    }
}

/// `device_add`'s properties as `key=value` text (for messages).
pub fn device_add_text() -> String {
    let mut text = DEVICE_DRIVER.to_string();
    for (key, value) in DEVICE_PROPS {
        text.push_str(&format!(",{key}={value}"));
    }
    text
}

/// The hub hotplug test: a hub (root port 4 of the USB 2 range, so port path 1-8) with a mouse
/// behind it; a keyboard is plugged into hub port 2 and pulled at run time, then the hub itself.
pub const HUB_NAME: &str = "hub_hotplug";
/// The hub test's machine.
pub const HUB_QEMU_ARGS: &[&str] = &[
    "-device",
    "qemu-xhci,id=xhci",
    "-device",
    "usb-hub,bus=xhci.0,port=4,id=hub0",
    "-device",
    "usb-mouse,bus=xhci.0,port=4.1",
];
/// Port paths the kernel gives them (the hub's port 4 is root port 8: ports 5-8 are USB 2).
pub const HUB_PATH: &str = "1-8";
/// The mouse behind the hub.
pub const HUB_MOUSE_PATH: &str = "1-8.1";
/// The keyboard plugged into hub port 2 at run time.
pub const HUB_KEYBOARD_PATH: &str = "1-8.2";

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(frames_free: u64, heap_used_kib: u64) -> MemStats {
        MemStats {
            frames_free,
            frames_total: 65000,
            heap_used_kib,
            heap_owned_kib: 4096,
            dma_small: None,
        }
    }

    fn mem_dma(frames_free: u64, blocks: u64, pages: u64) -> MemStats {
        MemStats {
            dma_small: Some((blocks, pages)),
            ..mem(frames_free, 800)
        }
    }

    #[test]
    fn a_small_dma_block_in_another_page_is_not_a_leak() {
        // Same blocks, one more page holding them: one frame fewer free, explained.
        assert_eq!(
            judge_leaks(&mem_dma(1000, 40, 9), &mem_dma(999, 40, 10)),
            Ok(())
        );
        assert_eq!(
            judge_leaks(&mem_dma(1000, 40, 9), &mem_dma(1001, 40, 8)),
            Ok(())
        );
        // More blocks in use is a leak even when the pages happen to match.
        let blocks = judge_leaks(&mem_dma(1000, 40, 9), &mem_dma(1000, 41, 9)).unwrap_err();
        assert!(
            blocks.contains("small DMA blocks in use 40 -> 41"),
            "{blocks}"
        );
        // A frame gone that the DMA pages do not explain.
        assert!(judge_leaks(&mem_dma(1000, 40, 9), &mem_dma(998, 40, 10)).is_err());
        assert!(judge_leaks(&mem_dma(1000, 40, 9), &mem_dma(999, 40, 9)).is_err());
    }

    #[test]
    fn cycle_count_from_env() {
        assert_eq!(cycles(None), Ok(100));
        assert_eq!(cycles(Some("")), Ok(100));
        assert_eq!(cycles(Some(" 5 ")), Ok(5));
        assert!(cycles(Some("0")).is_err());
        assert!(cycles(Some("lots")).is_err());
    }

    #[test]
    fn leak_rules() {
        assert_eq!(judge_leaks(&mem(1000, 800), &mem(1000, 800)), Ok(()));
        assert_eq!(judge_leaks(&mem(1000, 800), &mem(1000, 864)), Ok(()));
        assert_eq!(judge_leaks(&mem(1000, 800), &mem(1000, 700)), Ok(()));
        let frames = judge_leaks(&mem(1000, 800), &mem(990, 800)).unwrap_err();
        assert!(frames.contains("+10 frames"), "{frames}");
        // More free frames afterwards is wrong too (a double free, or counters off).
        assert!(judge_leaks(&mem(1000, 800), &mem(1001, 800)).is_err());
        let heap = judge_leaks(&mem(1000, 800), &mem(1000, 865)).unwrap_err();
        assert!(heap.contains("heap in use 800 KiB -> 865 KiB"), "{heap}");
    }

    #[test]
    fn machine_matches_device_add() {
        assert_eq!(
            device_add_text(),
            "usb-net,bus=xhci.0,netdev=n0,id=usbnet0,mac=52:54:00:12:34:56"
        );
        assert!(QEMU_ARGS.contains(&device_add_text().as_str()));
    }
}
