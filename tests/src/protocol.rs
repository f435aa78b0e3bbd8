//! The kernel's serial protocol, as the runner reads it.
//!
//! The kernel prints, on COM1:
//! - a line containing [`READY_MARKER`] once it is up (`TETHER READY cpus=2 uptime_us=81234`);
//! - a line containing [`PANIC_MARKER`] when it panics;
//! - in test mode, one `ktest <name> ... ok (<n> ms)` or `ktest <name> ... FAILED: <reason>`
//!   line per test and a closing `ktest done: N passed, N failed`.
//!
//! - on every USB attach and detach (normal boots, hotplug included):
//!   `usb: attached <controller> <port-path> <vid>:<pid> ...` and
//!   `usb: detached <controller> <port-path> <vid>:<pid> ...` ([`parse_usb_event`]), possibly
//!   after a log prefix (`[    0.062009] INFO  usb: attached xhci1 1-5 0525:a4a2 Full ...`);
//! - in reply to the console command `mem` (typed on COM1, ended by `\r`):
//!   `frames: F free of T (...); heap: H KiB in use of O KiB[; more fields]` ([`parse_mem_line`]).
//!
//! It leaves QEMU through `isa-debug-exit`, which turns the value written into the process exit
//! status `(value << 1) | 1`: [`EXIT_SUCCESS`] or [`EXIT_FAILURE`].

/// Text in the line the kernel prints when it is ready.
pub const READY_MARKER: &str = "TETHER READY";
/// Text in the line the kernel prints when it panics.
pub const PANIC_MARKER: &str = "KERNEL PANIC";
/// QEMU's exit status when the kernel reports success through isa-debug-exit.
pub const EXIT_SUCCESS: i32 = 33;
/// QEMU's exit status when the kernel reports failure or panics.
pub const EXIT_FAILURE: i32 = 35;

/// Whether a serial line is the kernel's ready line.
pub fn is_ready_line(line: &str) -> bool {
    line.contains(READY_MARKER)
}

/// Whether a serial line reports a kernel panic.
pub fn is_panic_line(line: &str) -> bool {
    line.contains(PANIC_MARKER)
}

/// What QEMU's exit status says about the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelExit {
    /// The kernel wrote its success code (status 33).
    Success,
    /// The kernel wrote its failure code or panicked (status 35).
    Failure,
    /// Any other status: QEMU itself failed, or the guest reset with `-no-reboot`
    /// (triple fault), or the process was killed by a signal (`None`).
    Other(Option<i32>),
}

impl KernelExit {
    /// Interprets QEMU's process exit status.
    pub fn from_status(code: Option<i32>) -> Self {
        match code {
            Some(EXIT_SUCCESS) => KernelExit::Success,
            Some(EXIT_FAILURE) => KernelExit::Failure,
            other => KernelExit::Other(other),
        }
    }
}

impl std::fmt::Display for KernelExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KernelExit::Success => write!(f, "kernel success (exit status {EXIT_SUCCESS})"),
            KernelExit::Failure => write!(f, "kernel failure (exit status {EXIT_FAILURE})"),
            KernelExit::Other(Some(code)) => write!(f, "QEMU exit status {code}"),
            KernelExit::Other(None) => write!(f, "QEMU killed by a signal"),
        }
    }
}

/// One line of the in-kernel test suite's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KtestLine {
    /// `ktest <name> ... ok (<n> ms)`
    Passed {
        /// Test name.
        name: String,
        /// Duration the kernel reported, when it gave one.
        millis: Option<u64>,
    },
    /// `ktest <name> ... FAILED: <reason>`
    Failed {
        /// Test name.
        name: String,
        /// The kernel's reason text.
        reason: String,
    },
    /// `ktest done: N passed, N failed`
    Done {
        /// Count the kernel reported as passed.
        passed: u32,
        /// Count the kernel reported as failed.
        failed: u32,
    },
}

/// Parses a `ktest` line; `None` for any other line.
///
/// The marker may be preceded by a log prefix (a timestamp, a CPU number), so it is searched
/// for anywhere in the line.
pub fn parse_ktest_line(line: &str) -> Option<KtestLine> {
    let line = line.trim_end();
    let start = find_word(line, "ktest ")?;
    let rest = &line[start + "ktest ".len()..];
    if let Some(counts) = rest.strip_prefix("done:") {
        let (passed, failed) = parse_counts(counts)?;
        return Some(KtestLine::Done { passed, failed });
    }
    let (name, outcome) = rest.split_once(" ... ")?;
    let name = name.trim();
    if name.is_empty() || name.contains(char::is_whitespace) {
        return None;
    }
    let outcome = outcome.trim();
    if let Some(reason) = outcome.strip_prefix("FAILED") {
        let reason = reason.trim_start_matches(':').trim();
        return Some(KtestLine::Failed {
            name: name.to_string(),
            reason: reason.to_string(),
        });
    }
    if outcome == "ok" || outcome.starts_with("ok ") {
        let millis = outcome
            .strip_prefix("ok")
            .map(str::trim)
            .and_then(|t| t.strip_prefix('('))
            .and_then(|t| t.strip_suffix(')'))
            .and_then(|t| t.trim().strip_suffix("ms"))
            .and_then(|t| t.trim().parse().ok());
        return Some(KtestLine::Passed {
            name: name.to_string(),
            millis,
        });
    }
    None
}

/// Position of `word` in `line` where it starts the line or follows a non-alphanumeric byte.
fn find_word(line: &str, word: &str) -> Option<usize> {
    line.match_indices(word).map(|(i, _)| i).find(|&i| {
        i == 0 || !line.as_bytes()[i - 1].is_ascii_alphanumeric() && line.as_bytes()[i - 1] != b'_'
    })
}

/// Parses `N passed, N failed` (surrounding text allowed after the counts).
pub fn parse_counts(text: &str) -> Option<(u32, u32)> {
    let mut passed = None;
    let mut failed = None;
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    for pair in words.windows(2) {
        let Ok(number) = pair[0].parse::<u32>() else {
            continue;
        };
        match pair[1] {
            "passed" => passed = passed.or(Some(number)),
            "failed" => failed = failed.or(Some(number)),
            _ => {}
        }
    }
    Some((passed?, failed?))
}

/// Whether a USB device arrived or left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsbEventKind {
    /// `usb: attached ...`
    Attached,
    /// `usb: detached ...`
    Detached,
}

/// One `usb: attached` / `usb: detached` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbEvent {
    /// Attached or detached.
    pub kind: UsbEventKind,
    /// Controller name (`xhci1`).
    pub controller: String,
    /// Port path on that controller (`1-5`, `1-8.1` behind a hub).
    pub port_path: String,
    /// Vendor ID.
    pub vid: u16,
    /// Product ID.
    pub pid: u16,
}

impl UsbEvent {
    /// Whether this is the device `vid:pid`.
    pub fn is_device(&self, vid: u16, pid: u16) -> bool {
        (self.vid, self.pid) == (vid, pid)
    }
}

/// Parses a `usb: attached <controller> <port-path> <vid>:<pid> ...` or
/// `usb: detached ...` line (anything before `usb:`, such as a log prefix, and anything after
/// the IDs is ignored); `None` for any other line.
pub fn parse_usb_event(line: &str) -> Option<UsbEvent> {
    let start = find_word(line, "usb: ")?;
    let mut words = line[start + "usb: ".len()..].split_whitespace();
    let kind = match words.next()? {
        "attached" => UsbEventKind::Attached,
        "detached" => UsbEventKind::Detached,
        _ => return None,
    };
    let controller = words.next()?.to_string();
    let port_path = words.next()?.to_string();
    let (vid, pid) = words.next()?.split_once(':')?;
    let hex = |t: &str| {
        (t.len() == 4)
            .then(|| u16::from_str_radix(t, 16).ok())
            .flatten()
    };
    Some(UsbEvent {
        kind,
        controller,
        port_path,
        vid: hex(vid)?,
        pid: hex(pid)?,
    })
}

/// The kernel's memory counters, from its console command `mem`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemStats {
    /// Free physical frames.
    pub frames_free: u64,
    /// All physical frames the allocator manages.
    pub frames_total: u64,
    /// Heap bytes in use, in KiB.
    pub heap_used_kib: u64,
    /// Heap bytes the allocator owns, in KiB.
    pub heap_owned_kib: u64,
    /// Sub-page DMA blocks in use and the pages holding them (`; DMA small blocks: B in P
    /// pages`), when the kernel reports them.
    pub dma_small: Option<(u64, u64)>,
}

/// Parses the reply to `mem`: `frames: F free of T (...); heap: H KiB in use of O KiB`
/// (text before `frames:`, inside the parentheses and in further `; ...` fields is ignored);
/// `None` for any other line.
pub fn parse_mem_line(line: &str) -> Option<MemStats> {
    let start = find_word(line, "frames: ")?;
    let rest = &line[start + "frames: ".len()..];
    let (frames, heap) = rest.split_once("; heap: ")?;
    let words: Vec<&str> = frames.split_whitespace().collect();
    let (frames_free, frames_total) = match words.as_slice() {
        [free, "free", "of", total, ..] => (free.parse().ok()?, total.parse().ok()?),
        _ => return None,
    };
    // Further `; ...` fields (the kernel adds some: `; 0 thread stacks pooled`) are ignored.
    let heap = heap.split(';').next().unwrap_or_default();
    let words: Vec<&str> = heap.split_whitespace().collect();
    let (heap_used_kib, heap_owned_kib) = match words.as_slice() {
        [used, "KiB", "in", "use", "of", owned, "KiB", ..] => {
            (used.parse().ok()?, owned.parse().ok()?)
        }
        _ => return None,
    };
    let dma_small = rest.split("; ").find_map(|field| {
        let words: Vec<&str> = field.split_whitespace().collect();
        match words.as_slice() {
            ["DMA", "small", "blocks:", blocks, "in", pages, "pages", ..] => {
                Some((blocks.parse().ok()?, pages.parse().ok()?))
            }
            _ => None,
        }
    });
    Some(MemStats {
        frames_free,
        frames_total,
        heap_used_kib,
        heap_owned_kib,
        dma_small,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_and_panic_lines() {
        assert!(is_ready_line("TETHER READY cpus=2 uptime_us=81234"));
        assert!(is_ready_line("[0.081] TETHER READY"));
        assert!(!is_ready_line("tether ready"));
        assert!(is_panic_line("KERNEL PANIC on cpu 1: oops"));
    }

    #[test]
    fn exit_status_meaning() {
        assert_eq!(KernelExit::from_status(Some(33)), KernelExit::Success);
        assert_eq!(KernelExit::from_status(Some(35)), KernelExit::Failure);
        assert_eq!(KernelExit::from_status(Some(0)), KernelExit::Other(Some(0)));
        assert_eq!(KernelExit::from_status(None), KernelExit::Other(None));
    }

    #[test]
    fn ktest_passed_with_and_without_time() {
        assert_eq!(
            parse_ktest_line("ktest mutex_fairness ... ok (12 ms)"),
            Some(KtestLine::Passed {
                name: "mutex_fairness".into(),
                millis: Some(12)
            })
        );
        assert_eq!(
            parse_ktest_line("ktest spin_basic ... ok\r"),
            Some(KtestLine::Passed {
                name: "spin_basic".into(),
                millis: None
            })
        );
    }

    #[test]
    fn ktest_failed_keeps_reason() {
        assert_eq!(
            parse_ktest_line("[ 1.5 cpu1] ktest condvar_timeout ... FAILED: woke after 0 ms"),
            Some(KtestLine::Failed {
                name: "condvar_timeout".into(),
                reason: "woke after 0 ms".into()
            })
        );
    }

    #[test]
    fn ktest_done_counts() {
        assert_eq!(
            parse_ktest_line("ktest done: 17 passed, 2 failed"),
            Some(KtestLine::Done {
                passed: 17,
                failed: 2
            })
        );
    }

    #[test]
    fn other_lines_are_not_ktest() {
        assert_eq!(parse_ktest_line("TETHER READY cpus=2"), None);
        assert_eq!(parse_ktest_line("ktest: starting 12 tests"), None);
        assert_eq!(parse_ktest_line("mktest foo ... ok"), None);
        assert_eq!(parse_ktest_line("ktest foo ... running"), None);
        assert_eq!(parse_ktest_line("ktest done: soon"), None);
    }

    #[test]
    fn counts_accept_cargo_and_plain_forms() {
        assert_eq!(parse_counts("3 passed, 1 failed"), Some((3, 1)));
        assert_eq!(
            parse_counts(" ok. 5 passed; 0 failed; 1 ignored; 0 measured"),
            Some((5, 0))
        );
        assert_eq!(parse_counts("5 passed"), None);
    }
    #[test]
    fn usb_attach_and_detach_lines() {
        assert_eq!(
            parse_usb_event(
                "[    0.066332] INFO  usb: attached xhci1 1-5 0525:a4a2 Full CDC 'QEMU USB Network Device' (no driver)"
            ),
            Some(UsbEvent {
                kind: UsbEventKind::Attached,
                controller: "xhci1".into(),
                port_path: "1-5".into(),
                vid: 0x0525,
                pid: 0xa4a2,
            })
        );
        let detached = parse_usb_event("tether> usb: detached xhci1 1-8.1 0627:0001\r").unwrap();
        assert_eq!(detached.kind, UsbEventKind::Detached);
        assert_eq!(detached.port_path, "1-8.1");
        assert!(detached.is_device(0x0627, 1));
        assert!(!detached.is_device(0x0525, 0xa4a2));
        // Upper-case hex is hex too.
        assert!(parse_usb_event("usb: attached xhci2 2-6 0525:A4A2").is_some());
    }

    #[test]
    fn other_usb_lines_are_not_events() {
        for line in [
            "[ 0.035] INFO  usb: xhci1: 0000:00:01.0 1b36:000d xHCI 0.00 running: 8 ports",
            "usb: attached xhci1 1-5",
            "usb: attached xhci1 1-5 525:a4a2",
            "usb: attached xhci1 1-5 0525-a4a2",
            "usb: attached xhci1 1-5 0525:a4a2x",
            "usb: enumeration ok (8 devices)",
            "myusb: attached xhci1 1-5 0525:a4a2",
            "usb device: xhci1 1-5 Full 0525:a4a2 class 02 no driver",
        ] {
            assert_eq!(parse_usb_event(line), None, "{line}");
        }
    }

    #[test]
    fn mem_reply() {
        let want = MemStats {
            frames_free: 63210,
            frames_total: 65280,
            heap_used_kib: 812,
            heap_owned_kib: 2048,
            dma_small: None,
        };
        assert_eq!(
            parse_mem_line(
                "frames: 63210 free of 65280 (246 MiB free); heap: 812 KiB in use of 2048 KiB"
            ),
            Some(want)
        );
        assert_eq!(
            parse_mem_line(
                "tether> frames: 63210 free of 65280 (x); heap: 812 KiB in use of 2048 KiB\r"
            ),
            Some(want)
        );
        assert_eq!(
            parse_mem_line("frames: 63961 free of 65406 (249 MiB free); heap: 1037 KiB in use of 4096 KiB; 0 thread stacks pooled"),
            Some(MemStats {
                frames_free: 63961,
                frames_total: 65406,
                heap_used_kib: 1037,
                heap_owned_kib: 4096,
                dma_small: None,
            })
        );
        assert_eq!(
            parse_mem_line("frames: 63961 free of 65406 (249 MiB free); heap: 1037 KiB in use of 4096 KiB; 3 thread stacks pooled; DMA small blocks: 41 in 9 pages")
                .and_then(|m| m.dma_small),
            Some((41, 9))
        );
        for line in [
            "tether> mem",
            "frames: 63210 free of 65280 (246 MiB free)",
            "frames: many free of 65280 (x); heap: 812 KiB in use of 2048 KiB",
            "frames: 1 free of 2 (x); heap: 812 MiB in use of 2048 MiB",
            "frames: 1 free of 2 (x); heap: 812 KiB in use",
        ] {
            assert_eq!(parse_mem_line(line), None, "{line}");
        }
    }
}
