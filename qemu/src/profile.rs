//! `tether profile`: a sampling profiler for a running Tether, through QEMU's gdbstub. Each
//! sample stops the machine, reads every vCPU's instruction pointer and lets it go on; the
//! addresses are named from the kernel ELF's symbol table. The kernel needs no support for it,
//! so it profiles exactly the kernel that runs.
//!
//! Costs to know when reading a profile: under TCG a stop takes 0.1-0.2 s, so the guest runs
//! only part of the time (a stream it serves slows down), and a vCPU stops only between
//! translated blocks, so a tight loop's samples gather on its first instruction. Percentages
//! are of samples, idle included.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use object::{Object, ObjectSymbol, SymbolKind};

/// Where the gdbstub listens, as QEMU's `-gdb` takes it (`-s` is `tcp::1234`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StubAddress {
    /// `HOST:PORT`.
    Tcp(String),
    /// A unix socket's path.
    Unix(PathBuf),
}

impl StubAddress {
    /// `tcp:HOST:PORT`, `tcp::PORT` (localhost), `unix:PATH`, or a bare port.
    pub fn parse(text: &str) -> Result<StubAddress, String> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path".into());
            }
            return Ok(StubAddress::Unix(path.into()));
        }
        let rest = text.strip_prefix("tcp:").unwrap_or(text);
        let (host, port) = rest.rsplit_once(':').unwrap_or(("", rest));
        let port: u16 = port
            .parse()
            .map_err(|_| format!("'{text}': expected tcp:HOST:PORT, unix:PATH or a port"))?;
        let host = if host.is_empty() { "127.0.0.1" } else { host };
        Ok(StubAddress::Tcp(format!("{host}:{port}")))
    }
}

/// The gdbstub's address for a QEMU started with `-s`.
pub const DEFAULT_STUB: &str = "tcp::1234";

impl Default for ProfileOptions {
    fn default() -> Self {
        ProfileOptions {
            stub: StubAddress::parse(DEFAULT_STUB).expect("the default address parses"),
            samples: 200,
            interval: Duration::from_millis(150),
            kernel: crate::paths::kernel_elf(),
            top: 30,
        }
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A GDB remote-protocol client: just what sampling needs.
pub struct GdbStub {
    stream: Box<dyn Stream>,
    received: Vec<u8>,
}

/// `$payload#checksum`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let sum = payload.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    let mut out = Vec::with_capacity(payload.len() + 4);
    out.push(b'$');
    out.extend_from_slice(payload);
    out.extend_from_slice(format!("#{sum:02x}").as_bytes());
    out
}

/// The first whole packet in `buf`: its payload (or why it is bad) and the bytes it used.
/// Acknowledgements (`+`) and anything before the `$` are skipped. QEMU neither escapes nor
/// run-length encodes the replies read here (hex digits, `T05thread:01;`, `OK`, `m01,02`).
fn take_packet(buf: &[u8]) -> Option<(Result<Vec<u8>, String>, usize)> {
    let start = buf.iter().position(|&b| b == b'$')?;
    let end = start + 1 + buf[start + 1..].iter().position(|&b| b == b'#')?;
    let checksum = buf.get(end + 1..end + 3)?;
    let payload = &buf[start + 1..end];
    let sum = payload.iter().fold(0u8, |s, b| s.wrapping_add(*b));
    let stated = std::str::from_utf8(checksum)
        .ok()
        .and_then(|t| u8::from_str_radix(t, 16).ok());
    let result = if stated == Some(sum) {
        Ok(payload.to_vec())
    } else {
        Err(format!(
            "a packet with a bad checksum ({})",
            String::from_utf8_lossy(checksum)
        ))
    };
    Some((result, end + 3))
}

/// Thread ids from a `qfThreadInfo`/`qsThreadInfo` reply: `m01,02` gives [1, 2], `l` none.
fn thread_ids(reply: &[u8]) -> Result<Option<Vec<u64>>, String> {
    if reply == b"l" {
        return Ok(None);
    }
    let list = reply
        .strip_prefix(b"m")
        .ok_or_else(|| format!("thread list '{}'", String::from_utf8_lossy(reply)))?;
    let list = std::str::from_utf8(list).map_err(|_| "thread list not text".to_string())?;
    list.split(',')
        .map(|id| {
            // With multiprocess ids QEMU writes `p1.2`; the thread is after the dot.
            let id = id.rsplit('.').next().unwrap_or(id);
            u64::from_str_radix(id.trim_start_matches('p'), 16)
                .map_err(|_| format!("thread id '{id}'"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The instruction pointer from an x86-64 `g` reply: 16 general registers of 8 bytes, then
/// rip, each little-endian in hex.
fn rip_from_registers(reply: &[u8]) -> Result<u64, String> {
    let hex = reply
        .get(16 * 16..17 * 16)
        .ok_or_else(|| format!("a register reply of {} characters", reply.len()))?;
    let hex = std::str::from_utf8(hex).map_err(|_| "registers not text".to_string())?;
    let mut bytes = [0u8; 8];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| format!("rip '{hex}' is not hex"))?;
    }
    Ok(u64::from_le_bytes(bytes))
}

impl GdbStub {
    /// Connects; QEMU stops the machine when a debugger connects, so this lets it run again.
    pub fn connect(address: &StubAddress, timeout: Duration) -> Result<GdbStub> {
        let deadline = Instant::now() + timeout;
        let stream: Box<dyn Stream> = loop {
            let attempt: std::io::Result<Box<dyn Stream>> = match address {
                StubAddress::Tcp(addr) => TcpStream::connect(addr).map(|s| {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    Box::new(s) as Box<dyn Stream>
                }),
                StubAddress::Unix(path) => UnixStream::connect(path).map(|s| {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    Box::new(s) as Box<dyn Stream>
                }),
            };
            match attempt {
                Ok(stream) => break stream,
                Err(e) if Instant::now() >= deadline => {
                    return Err(e).with_context(|| format!("connecting to the gdbstub {address:?}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let mut stub = GdbStub {
            stream,
            received: Vec::new(),
        };
        stub.request(b"?", |r| r.starts_with(b"T") || r.starts_with(b"S"))?;
        stub.resume()?;
        Ok(stub)
    }

    fn read_packet(&mut self) -> Result<Vec<u8>> {
        loop {
            if let Some((packet, used)) = take_packet(&self.received) {
                self.received.drain(..used);
                // In acknowledged mode every packet is acknowledged, good or bad (a bad one
                // would be sent again after `-`, but a stub on a local socket sends none).
                self.stream.write_all(b"+")?;
                return packet.map_err(|e| anyhow!(e));
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .stream
                .read(&mut chunk)
                .context("reading from the gdbstub")?;
            if n == 0 {
                bail!("the gdbstub closed the connection (QEMU gone?)");
            }
            self.received.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `command` and returns the first reply `wanted` accepts (stop replies that crossed
    /// it are passed over).
    fn request(&mut self, command: &[u8], wanted: impl Fn(&[u8]) -> bool) -> Result<Vec<u8>> {
        self.stream.write_all(&frame(command))?;
        for _ in 0..16 {
            let reply = self.read_packet()?;
            if reply.starts_with(b"E") && reply.len() == 3 {
                bail!(
                    "the gdbstub answered {} to {}",
                    String::from_utf8_lossy(&reply),
                    String::from_utf8_lossy(command)
                );
            }
            if wanted(&reply) {
                return Ok(reply);
            }
        }
        bail!("no fitting answer to {}", String::from_utf8_lossy(command))
    }

    /// The vCPUs' thread ids (1, 2, ... in QEMU).
    pub fn threads(&mut self) -> Result<Vec<u64>> {
        let mut ids = Vec::new();
        let mut command: &[u8] = b"qfThreadInfo";
        let thread_list = |r: &[u8]| r.starts_with(b"m") || r == b"l";
        while let Some(more) =
            thread_ids(&self.request(command, thread_list)?).map_err(|e| anyhow!(e))?
        {
            ids.extend(more);
            command = b"qsThreadInfo";
            if ids.len() > 4096 {
                bail!("the thread list does not end");
            }
        }
        Ok(ids)
    }

    /// Stops the machine.
    pub fn interrupt(&mut self) -> Result<()> {
        self.stream.write_all(&[0x03])?;
        loop {
            let reply = self.read_packet()?;
            if reply.starts_with(b"T") || reply.starts_with(b"S") {
                return Ok(());
            }
        }
    }

    /// The stopped vCPU `thread`'s instruction pointer.
    pub fn rip(&mut self, thread: u64) -> Result<u64> {
        self.request(format!("Hg{thread:x}").as_bytes(), |r| r == b"OK")?;
        let registers = self.request(b"g", |r| r.len() >= 17 * 16)?;
        rip_from_registers(&registers).map_err(|e| anyhow!(e))
    }

    /// Lets the machine run (no answer until the next stop).
    pub fn resume(&mut self) -> Result<()> {
        Ok(self.stream.write_all(&frame(b"c"))?)
    }

    /// Stops, detaches (the machine runs on) and closes.
    pub fn detach(mut self) -> Result<()> {
        self.interrupt()?;
        self.request(b"D", |r| r == b"OK")?;
        Ok(())
    }
}

/// Function symbols of the kernel ELF, by address.
pub struct Symbols {
    /// (start, end, demangled name without the hash), sorted by start.
    functions: Vec<(u64, u64, String)>,
}

impl Symbols {
    /// Reads the ELF at `path`.
    pub fn from_elf(path: &Path) -> Result<Symbols> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Symbols::from_elf_bytes(&data).with_context(|| format!("symbols of {}", path.display()))
    }

    /// Reads an ELF image in memory.
    pub fn from_elf_bytes(data: &[u8]) -> Result<Symbols> {
        let file = object::File::parse(data)?;
        let mut functions: Vec<(u64, u64, String)> = file
            .symbols()
            .filter(|s| s.kind() == SymbolKind::Text && s.address() != 0)
            .filter_map(|s| {
                let name = s.name().ok()?;
                Some((
                    s.address(),
                    s.address() + s.size().max(1),
                    format!("{:#}", rustc_demangle::demangle(name)),
                ))
            })
            .collect();
        if functions.is_empty() {
            bail!("no function symbols (a stripped kernel?)");
        }
        functions.sort();
        Ok(Symbols { functions })
    }

    /// The function `address` lies in.
    pub fn name(&self, address: u64) -> Option<&str> {
        let after = self
            .functions
            .partition_point(|(start, _, _)| *start <= address);
        let (_, end, name) = self.functions.get(after.checked_sub(1)?)?;
        (address < *end).then_some(name.as_str())
    }
}

/// Samples counted per function.
#[derive(Debug, Default)]
pub struct Profile {
    /// Instruction pointers read (stops times vCPUs).
    pub samples: u64,
    /// Samples per function name.
    pub by_function: HashMap<String, u64>,
    /// vCPUs sampled each time.
    pub cpus: usize,
}

/// What a sample outside every function symbol is counted as.
pub const UNKNOWN: &str = "(no symbol)";

impl Profile {
    /// Counts one instruction pointer.
    pub fn add(&mut self, symbols: &Symbols, rip: u64) {
        let name = symbols.name(rip).unwrap_or(UNKNOWN);
        *self.by_function.entry(name.to_string()).or_default() += 1;
        self.samples += 1;
    }

    /// Functions by samples, most first (ties by name, so the order is stable).
    pub fn ranked(&self) -> Vec<(&str, u64)> {
        let mut ranked: Vec<(&str, u64)> = self
            .by_function
            .iter()
            .map(|(name, count)| (name.as_str(), *count))
            .collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        ranked
    }

    /// The report: a line per function, the `top` most sampled.
    pub fn report(&self, top: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{} samples ({} vCPUs per stop); % of samples, idle included",
            self.samples, self.cpus
        );
        for (name, count) in self.ranked().into_iter().take(top) {
            let share = 100.0 * count as f64 / self.samples.max(1) as f64;
            let _ = writeln!(out, "{share:6.1}% {count:6}  {name}");
        }
        out
    }
}

/// How to sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileOptions {
    /// The gdbstub to attach to.
    pub stub: StubAddress,
    /// Stops to make.
    pub samples: u32,
    /// How long the machine runs between stops.
    pub interval: Duration,
    /// The running kernel's ELF.
    pub kernel: PathBuf,
    /// Functions to list.
    pub top: usize,
}

/// Takes `options.samples` stops' worth of samples, then detaches.
pub fn sample(options: &ProfileOptions, symbols: &Symbols) -> Result<Profile> {
    let mut stub = GdbStub::connect(&options.stub, Duration::from_secs(10))?;
    let mut profile = Profile::default();
    let mut threads = Vec::new();
    for n in 0..options.samples {
        std::thread::sleep(options.interval);
        stub.interrupt()?;
        if n == 0 {
            threads = stub.threads()?;
            if threads.is_empty() {
                bail!("the gdbstub lists no vCPU");
            }
            profile.cpus = threads.len();
        }
        for &thread in &threads {
            let rip = stub.rip(thread)?;
            profile.add(symbols, rip);
        }
        stub.resume()?;
    }
    stub.detach()?;
    Ok(profile)
}

/// `tether profile`.
pub fn profile_command(options: &ProfileOptions) -> Result<()> {
    let symbols = Symbols::from_elf(&options.kernel)?;
    println!(
        "profiling through the gdbstub {:?}: {} stops {} ms apart (the machine is stopped for each)",
        options.stub,
        options.samples,
        options.interval.as_millis()
    );
    let profile = sample(options, &symbols)?;
    print!("{}", profile.report(options.top));
    Ok(())
}

/// `boot::profile_idle`'s name.
pub const TEST_NAME: &str = "profile_idle";

/// Boots an idle kernel with a gdbstub and profiles it: every stop must read both vCPUs, name
/// every address, find them mostly in the idle loop, and leave the machine running after the
/// detach (the console still answers).
pub fn run_profile_test(
    kernel: &Path,
    settings: &crate::boots::BootSettings,
) -> crate::report::TestOutcome {
    use crate::report::TestOutcome;
    let name = format!("boot::{TEST_NAME}");
    let socket = settings.qmp_socket(TEST_NAME).with_extension("gdb");
    let _ = std::fs::remove_file(&socket);
    let mut machine = crate::preset::Machine::pvh(kernel, "");
    machine.extra_args.extend([
        "-gdb".to_string(),
        format!("unix:{},server=on,wait=off", socket.display()),
    ]);
    let (mut q, log) = match settings.spawn(TEST_NAME, &machine) {
        Ok(spawned) => spawned,
        Err(failure) => return TestOutcome { name, ..failure },
    };
    let started = Instant::now();
    let result = (|| -> Result<String, String> {
        let ready = q.wait_for(
            started + Duration::from_secs(60),
            tether_tests::protocol::is_ready_line,
        );
        if !matches!(ready, crate::instance::Wait::Found(_)) {
            return Err(format!("no ready line ({ready:?})"));
        }
        let symbols = Symbols::from_elf(kernel).map_err(|e| format!("{e:#}"))?;
        let options = ProfileOptions {
            stub: StubAddress::Unix(socket.clone()),
            samples: 10,
            interval: Duration::from_millis(50),
            kernel: kernel.to_path_buf(),
            top: 5,
        };
        let profile = sample(&options, &symbols).map_err(|e| format!("{e:#}"))?;
        let report = profile.report(options.top);
        if profile.cpus != 2 || profile.samples != 20 {
            return Err(format!("expected 10 stops of 2 vCPUs:\n{report}"));
        }
        if profile.by_function.contains_key(UNKNOWN) {
            return Err(format!("an address outside every function:\n{report}"));
        }
        let idle = profile
            .by_function
            .get("tether_kernel::sched::idle_loop")
            .copied()
            .unwrap_or(0);
        if idle * 2 < profile.samples {
            return Err(format!(
                "an idle kernel mostly outside its idle loop:\n{report}"
            ));
        }
        q.send_serial_line("mem").map_err(|e| format!("{e:#}"))?;
        let answered = q.wait_for(Instant::now() + Duration::from_secs(10), |l| {
            l.contains("frames:") && l.contains("free of")
        });
        if !matches!(answered, crate::instance::Wait::Found(_)) {
            return Err("the console did not answer after the detach".into());
        }
        Ok(format!(
            "{} samples of 2 vCPUs, {idle} in the idle loop, all named; running on after the detach",
            profile.samples
        ))
    })();
    q.kill();
    let _ = std::fs::remove_file(&socket);
    let outcome = match result {
        Ok(summary) => TestOutcome::pass(&name, summary),
        Err(reason) => TestOutcome::fail(&name, reason),
    };
    outcome.with_context(crate::boots::failure_context(&q, &log, &machine))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_framed_and_checked() {
        assert_eq!(frame(b"g"), b"$g#67");
        assert_eq!(frame(b"qfThreadInfo"), b"$qfThreadInfo#bb");
        let (payload, used) = take_packet(b"++$OK#9a$T0").unwrap();
        assert_eq!(payload.unwrap(), b"OK");
        assert_eq!(used, 8);
        assert!(
            take_packet(b"$OK#9").is_none(),
            "a packet without its whole checksum waits"
        );
        assert!(take_packet(b"+").is_none());
        let (bad, _) = take_packet(b"$OK#00").unwrap();
        assert!(bad.unwrap_err().contains("bad checksum"));
    }

    #[test]
    fn thread_lists() {
        assert_eq!(thread_ids(b"m01,02"), Ok(Some(vec![1, 2])));
        assert_eq!(thread_ids(b"m0a"), Ok(Some(vec![10])));
        assert_eq!(thread_ids(b"mp1.1,p1.2"), Ok(Some(vec![1, 2])));
        assert_eq!(thread_ids(b"l"), Ok(None));
        assert!(thread_ids(b"E01").is_err());
        assert!(thread_ids(b"mzz").is_err());
    }

    #[test]
    fn rip_is_the_seventeenth_register() {
        let mut reply = "0".repeat(16 * 16);
        reply.push_str("62e2260000000000"); // 0x26e262, little-endian
        reply.push_str("46020000"); // eflags and the rest follow
        assert_eq!(rip_from_registers(reply.as_bytes()), Ok(0x26e262));
        assert!(rip_from_registers(b"0000").is_err());
        let mut bad = "0".repeat(16 * 16);
        bad.push_str("zz00000000000000");
        assert!(rip_from_registers(bad.as_bytes()).is_err());
    }

    #[test]
    fn stub_addresses() {
        assert_eq!(
            StubAddress::parse("tcp::1234"),
            Ok(StubAddress::Tcp("127.0.0.1:1234".into()))
        );
        assert_eq!(
            StubAddress::parse("tcp:10.0.0.1:9000"),
            Ok(StubAddress::Tcp("10.0.0.1:9000".into()))
        );
        assert_eq!(
            StubAddress::parse("1234"),
            Ok(StubAddress::Tcp("127.0.0.1:1234".into()))
        );
        assert_eq!(
            StubAddress::parse("unix:/tmp/g.sock"),
            Ok(StubAddress::Unix("/tmp/g.sock".into()))
        );
        assert!(StubAddress::parse("unix:").is_err());
        assert!(StubAddress::parse("tcp::http").is_err());
    }

    fn symbols() -> Symbols {
        Symbols {
            functions: vec![
                (0x1000, 0x1010, "a".into()),
                (0x1010, 0x1100, "b".into()),
                (0x2000, 0x2008, "c".into()),
            ],
        }
    }

    #[test]
    fn addresses_name_their_function() {
        let s = symbols();
        assert_eq!(s.name(0x1000), Some("a"));
        assert_eq!(s.name(0x100f), Some("a"));
        assert_eq!(s.name(0x1010), Some("b"));
        assert_eq!(s.name(0x1100), None, "past b's end, before c");
        assert_eq!(s.name(0xfff), None);
        assert_eq!(s.name(0x2007), Some("c"));
        assert_eq!(s.name(0x2008), None);
    }

    #[test]
    fn profile_ranks_and_reports() {
        let s = symbols();
        let mut p = Profile {
            cpus: 2,
            ..Profile::default()
        };
        for rip in [0x1004, 0x1020, 0x1030, 0x1001, 0x1040, 0x5000] {
            p.add(&s, rip);
        }
        assert_eq!(p.ranked(), vec![("b", 3), ("a", 2), (UNKNOWN, 1)]);
        let report = p.report(2);
        assert!(
            report.starts_with("6 samples (2 vCPUs per stop)"),
            "{report}"
        );
        assert!(report.contains("  50.0%      3  b\n"), "{report}");
        assert!(!report.contains(UNKNOWN), "only the top 2: {report}");
    }

    #[test]
    fn the_test_binary_has_symbols_to_name() {
        // This test's own executable is an ELF with a symbol table: a function of it is named.
        let exe = std::env::current_exe().unwrap();
        let symbols = Symbols::from_elf(&exe).unwrap();
        assert!(symbols
            .functions
            .iter()
            .any(|(_, _, name)| name.ends_with("the_test_binary_has_symbols_to_name")));
        let (start, _, name) = &symbols.functions[symbols.functions.len() / 2];
        assert_eq!(symbols.name(*start), Some(name.as_str()));
        assert!(Symbols::from_elf_bytes(b"not an ELF").is_err());
    }
}
