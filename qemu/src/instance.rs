//! A running QEMU: spawned with its serial console (`-serial stdio`) on pipes — output read
//! line by line on a reader thread, input written by [`Instance::send_serial_line`] — every wait
//! bounded by a deadline, killed when dropped. A machine with a QMP socket can be driven
//! through [`Instance::connect_qmp`].

use crate::preset::Machine;
use crate::qmp::Qmp;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One serial line and when the runner received it.
#[derive(Debug, Clone)]
pub struct SerialLine {
    /// Time the reader thread received the line.
    pub at: Instant,
    /// The line, without its line ending (lossily decoded as UTF-8).
    pub text: String,
}

/// What a wait ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wait {
    /// A line matched; its text.
    Found(String),
    /// QEMU exited first; its exit status (`None`: killed by a signal).
    Exited(Option<i32>),
    /// The deadline passed first.
    TimedOut,
}

enum ReaderEvent {
    Line(SerialLine),
    Closed,
}

/// How to echo serial lines while capturing them.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    /// Print every serial line to stderr with this prefix.
    pub prefix: Option<String>,
}

/// A running QEMU process (or any program standing in for it in tests).
pub struct Instance {
    child: Child,
    stdin: Option<ChildStdin>,
    qmp_socket: Option<PathBuf>,
    events: Receiver<ReaderEvent>,
    lines: Vec<SerialLine>,
    stderr: Arc<Mutex<String>>,
    spawned_at: Instant,
    stream_closed: bool,
    exit_status: Option<Option<i32>>,
}

impl Instance {
    /// Spawns `cmd` with stdin, stdout and stderr on pipes (stdin stays open for
    /// [`Instance::send_serial_line`]). Serial lines are also written to `log` when given, and
    /// echoed as `echo` says.
    pub fn spawn(mut cmd: Command, log: Option<&Path>, echo: Echo) -> Result<Instance> {
        let mut log_file = match log {
            Some(path) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                Some(File::create(path).with_context(|| format!("creating {}", path.display()))?)
            }
            None => None,
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawned_at = Instant::now();
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {:?}", cmd.get_program()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");

        let (sender, events) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let at = Instant::now();
                let text = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                if let Some(file) = log_file.as_mut() {
                    let _ = writeln!(file, "{text}");
                }
                if let Some(prefix) = &echo.prefix {
                    eprintln!("{prefix}{text}");
                }
                if sender
                    .send(ReaderEvent::Line(SerialLine { at, text }))
                    .is_err()
                {
                    break;
                }
            }
            let _ = sender.send(ReaderEvent::Closed);
        });

        let stderr = Arc::new(Mutex::new(String::new()));
        let stderr_sink = Arc::clone(&stderr);
        // Appended as it arrives: a test may read QEMU's trace output while QEMU runs.
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                stderr_sink
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });

        Ok(Instance {
            child,
            stdin,
            qmp_socket: None,
            events,
            lines: Vec::new(),
            stderr,
            spawned_at,
            stream_closed: false,
            exit_status: None,
        })
    }

    /// Spawns QEMU for `machine` (as [`Instance::spawn`]). A stale socket file at the machine's
    /// QMP path is removed first; the path is kept for [`Instance::connect_qmp`] and the file
    /// removed when the instance is dropped.
    pub fn spawn_machine(machine: &Machine, log: Option<&Path>, echo: Echo) -> Result<Instance> {
        Instance::spawn_with_qmp(machine.command(), machine.qmp.as_deref(), log, echo)
    }

    /// [`Instance::spawn`] of a command that opens a QMP socket at `qmp`.
    pub fn spawn_with_qmp(
        cmd: Command,
        qmp: Option<&Path>,
        log: Option<&Path>,
        echo: Echo,
    ) -> Result<Instance> {
        if let Some(socket) = qmp {
            if let Some(parent) = socket.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match std::fs::remove_file(socket) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("removing {}", socket.display()))
                }
                _ => {}
            }
        }
        let mut instance = Instance::spawn(cmd, log, echo)?;
        instance.qmp_socket = qmp.map(Path::to_path_buf);
        Ok(instance)
    }

    /// The process id of what was spawned (QEMU, or a wrapper that execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The QMP socket's path, when the machine has one.
    pub fn qmp_socket(&self) -> Option<&Path> {
        self.qmp_socket.as_deref()
    }

    /// Connects to the machine's QMP socket (retrying while QEMU starts), within `timeout`;
    /// every later QMP call is bounded by `timeout` too.
    pub fn connect_qmp(&self, timeout: Duration) -> Result<Qmp> {
        let Some(socket) = &self.qmp_socket else {
            bail!("this machine has no QMP socket (Machine::qmp)");
        };
        Ok(Qmp::connect(socket, timeout)?)
    }

    /// Types `text` on the serial console, ended by `\r` (what a terminal's Enter sends; the
    /// kernel's console shell runs a command on `\r`).
    pub fn send_serial_line(&mut self, text: &str) -> Result<()> {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(b'\r');
        self.send_serial(&bytes)
    }

    /// Writes raw bytes to the serial console (QEMU's stdin under `-serial stdio`).
    pub fn send_serial(&mut self, bytes: &[u8]) -> Result<()> {
        let Some(stdin) = self.stdin.as_mut() else {
            bail!("serial input is closed");
        };
        stdin
            .write_all(bytes)
            .and_then(|()| stdin.flush())
            .context("writing to the serial console (QEMU's stdin)")
    }

    /// When the process was spawned.
    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// Every serial line received so far.
    pub fn lines(&self) -> &[SerialLine] {
        &self.lines
    }

    /// Every serial line received so far, as text.
    pub fn texts(&self) -> Vec<String> {
        self.lines.iter().map(|l| l.text.clone()).collect()
    }

    /// The last `n` serial lines.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..].iter().map(|l| l.text.clone()).collect()
    }

    /// What the process wrote to stderr so far (QEMU's own errors).
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The exit status once the process has exited and been reaped.
    pub fn exit_status(&self) -> Option<Option<i32>> {
        self.exit_status
    }

    /// Waits for the next serial line until `deadline`. `Exited` once the serial stream has
    /// closed and the process has exited.
    pub fn next_line(&mut self, deadline: Instant) -> Wait {
        if !self.stream_closed {
            let timeout = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(timeout) {
                Ok(ReaderEvent::Line(line)) => {
                    let text = line.text.clone();
                    self.lines.push(line);
                    return Wait::Found(text);
                }
                Ok(ReaderEvent::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    self.stream_closed = true;
                }
                Err(RecvTimeoutError::Timeout) => return Wait::TimedOut,
            }
        }
        match self.wait_exit(deadline) {
            Some(status) => Wait::Exited(status),
            None => Wait::TimedOut,
        }
    }

    /// Waits until a serial line satisfies `matches`, the process exits, or `deadline` passes.
    pub fn wait_for(&mut self, deadline: Instant, matches: impl Fn(&str) -> bool) -> Wait {
        loop {
            match self.next_line(deadline) {
                Wait::Found(text) if matches(&text) => return Wait::Found(text),
                Wait::Found(_) => continue,
                other => return other,
            }
        }
    }

    /// Reads serial lines until the process exits or `deadline` passes; the exit status, or
    /// `None` on timeout.
    pub fn wait_exit(&mut self, deadline: Instant) -> Option<Option<i32>> {
        while !self.stream_closed {
            let timeout = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(timeout) {
                Ok(ReaderEvent::Line(line)) => self.lines.push(line),
                Ok(ReaderEvent::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    self.stream_closed = true
                }
                Err(RecvTimeoutError::Timeout) => return None,
            }
        }
        loop {
            if let Some(status) = self.exit_status {
                return Some(status);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit_status = Some(status.code());
                continue;
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Kills the process (if still running) and reaps it. Lines already received stay.
    pub fn kill(&mut self) {
        if self.exit_status.is_none() {
            let _ = self.child.kill();
            if let Ok(status) = self.child.wait() {
                self.exit_status = Some(status.code());
            }
        }
        // Collect whatever the reader had already received.
        while let Ok(event) = self.events.try_recv() {
            if let ReaderEvent::Line(line) = event {
                self.lines.push(line);
            }
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
        // A killed QEMU leaves its socket file behind.
        if let Some(socket) = &self.qmp_socket {
            let _ = std::fs::remove_file(socket);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Instance {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        Instance::spawn(cmd, None, Echo::default()).unwrap()
    }

    fn soon(seconds: u64) -> Instant {
        Instant::now() + Duration::from_secs(seconds)
    }

    #[test]
    fn finds_a_line_and_keeps_history() {
        let mut q = sh("printf 'boot\\r\\nTETHER READY cpus=2\\n'; sleep 30");
        assert_eq!(
            q.wait_for(soon(10), |l| l.contains("READY")),
            Wait::Found("TETHER READY cpus=2".into())
        );
        assert_eq!(q.texts(), ["boot", "TETHER READY cpus=2"]);
        q.kill();
        assert_eq!(q.exit_status(), Some(None));
    }

    #[test]
    fn reports_exit_status() {
        let mut q = sh("echo 'KERNEL PANIC: x'; exit 35");
        assert_eq!(
            q.wait_for(soon(10), |l| l.contains("READY")),
            Wait::Exited(Some(35))
        );
        assert_eq!(q.tail(40), ["KERNEL PANIC: x"]);
    }

    #[test]
    fn times_out_on_silence() {
        let mut q = sh("echo starting; sleep 30");
        let started = Instant::now();
        let deadline = Instant::now() + Duration::from_millis(300);
        assert_eq!(
            q.wait_for(deadline, |l| l.contains("READY")),
            Wait::TimedOut
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            q.wait_exit(Instant::now() + Duration::from_millis(100)),
            None
        );
    }

    #[test]
    fn partial_last_line_and_stderr() {
        let mut q = sh("printf 'no newline'; echo oops >&2; exit 33");
        assert_eq!(q.wait_exit(soon(10)), Some(Some(33)));
        assert_eq!(q.texts(), ["no newline"]);
        // stderr is read on its own thread; give it a moment.
        let deadline = soon(5);
        while !q.stderr_text().contains("oops") && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(q.stderr_text().contains("oops"));
    }

    #[test]
    fn serial_input_reaches_the_program() {
        // A console that answers each `\r`-ended command on its own line.
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(r#"while read -r -d $'\r' cmd; do echo "got <$cmd>"; done"#);
        let mut q = Instance::spawn(cmd, None, Echo::default()).unwrap();
        q.send_serial_line("mem").unwrap();
        assert_eq!(
            q.wait_for(soon(10), |l| l.starts_with("got")),
            Wait::Found("got <mem>".into())
        );
        q.send_serial_line("usb 2").unwrap();
        assert_eq!(
            q.wait_for(soon(10), |l| l.starts_with("got")),
            Wait::Found("got <usb 2>".into())
        );
        assert!(q.connect_qmp(Duration::from_millis(10)).is_err());
    }

    #[test]
    fn qmp_socket_is_fresh_and_removed() {
        let dir = std::env::temp_dir().join(format!("tether-instance-qmp-{}", std::process::id()));
        let socket = dir.join("m.qmp");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&socket, "stale").unwrap();
        let mut cmd = Command::new("sh");
        // Stands in for QEMU creating its socket.
        cmd.arg("-c")
            .arg(format!("echo > {}; sleep 30", socket.display()));
        let q = Instance::spawn_with_qmp(cmd, Some(&socket), None, Echo::default()).unwrap();
        assert_eq!(q.qmp_socket(), Some(socket.as_path()));
        let deadline = soon(10);
        while std::fs::read_to_string(&socket).unwrap_or_default() != "\n" {
            assert!(Instant::now() < deadline, "the stale file was not replaced");
            thread::sleep(Duration::from_millis(10));
        }
        // Not a socket: connecting fails, within the bound.
        assert!(q.connect_qmp(Duration::from_millis(100)).is_err());
        drop(q);
        assert!(!socket.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn writes_a_log() {
        let path = std::env::temp_dir().join(format!("tether-instance-{}.log", std::process::id()));
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg("echo one; echo two");
        let mut q = Instance::spawn(cmd, Some(&path), Echo::default()).unwrap();
        assert_eq!(q.wait_exit(soon(10)), Some(Some(0)));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\ntwo\n");
        let _ = std::fs::remove_file(path);
    }
}
