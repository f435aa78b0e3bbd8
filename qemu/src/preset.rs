//! QEMU command lines, built from a small description of the machine.
//!
//! Every preset runs under TCG (`-accel tcg,thread=multi`): on these hosts KVM is a nested
//! software hypervisor that is slower than TCG and fails on some instructions (see FACTS.md).

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
pub use tether_tests::suites::Firmware;

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// Environment variable naming another QEMU binary (a newer build, or a stand-in script that
/// exercises the runner without a kernel).
pub const QEMU_ENV: &str = "TETHER_QEMU";

/// The QEMU program to run: `$TETHER_QEMU`, else [`QEMU`] from PATH.
pub fn qemu_program() -> String {
    std::env::var(QEMU_ENV)
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| QEMU.to_string())
}
/// Debian's OVMF (UEFI firmware). Passed as read-only `-bios`: a shared writable variable store
/// drops into the UEFI shell instead of booting the CD.
pub const OVMF_PATH: &str = "/usr/share/ovmf/OVMF.fd";
/// isa-debug-exit I/O port the kernel writes its exit code to.
pub const DEBUG_EXIT_IOBASE: u16 = 0xf4;

/// How the machine boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// QEMU loads the kernel ELF itself through its Xen PVH note (`-kernel`): the fast path.
    Pvh {
        /// The kernel ELF.
        kernel: PathBuf,
        /// Kernel command line (`-append`).
        cmdline: String,
    },
    /// Firmware boots the GRUB hybrid ISO from a CD drive; the command line is in its grub.cfg.
    Iso {
        /// The ISO file.
        iso: PathBuf,
        /// SeaBIOS or OVMF.
        firmware: Firmware,
    },
}

/// Transport protocol of a forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A host port on 127.0.0.1 forwarded to a guest port by QEMU's user networking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Port on the host's 127.0.0.1.
    pub host_port: u16,
    /// Port in the guest.
    pub guest_port: u16,
}

impl PortForward {
    /// Parses `tcp:HOST_PORT:GUEST_PORT` (or `udp:...`; `HOST_PORT:GUEST_PORT` means TCP).
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let (protocol, host, guest) = match parts.as_slice() {
            [host, guest] => (Protocol::Tcp, *host, *guest),
            ["tcp", host, guest] => (Protocol::Tcp, *host, *guest),
            ["udp", host, guest] => (Protocol::Udp, *host, *guest),
            _ => {
                return Err(format!(
                    "port forward {text:?}: expected tcp:HOST_PORT:GUEST_PORT"
                ))
            }
        };
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| format!("port forward {text:?}: {p:?} is not a port number"))
        };
        Ok(PortForward {
            protocol,
            host_port: port(host)?,
            guest_port: port(guest)?,
        })
    }

    /// The `hostfwd=` value QEMU's `-netdev user` takes.
    pub fn hostfwd(&self) -> String {
        let proto = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        format!(
            "hostfwd={proto}:127.0.0.1:{}-:{}",
            self.host_port, self.guest_port
        )
    }
}

/// The machine's network.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Network {
    /// No network device.
    #[default]
    None,
    /// A `qemu-xhci` controller with a `usb-net` device on it, backed by QEMU's user-mode
    /// network (slirp) with ports forwarded from 127.0.0.1.
    UsbNetUser {
        /// Forwarded ports.
        forwards: Vec<PortForward>,
    },
}

/// A QEMU machine: what the runner boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// How it boots.
    pub boot: Boot,
    /// Number of CPUs.
    pub cpus: u32,
    /// Memory, as QEMU's `-m` takes it (`256M`).
    pub memory: String,
    /// Network devices.
    pub network: Network,
    /// Extra arguments passed to QEMU as they are.
    pub extra_args: Vec<String>,
    /// A QMP socket QEMU listens on (`-qmp unix:PATH,server=on,wait=off`), for host-driven
    /// tests ([`crate::qmp::Qmp`]).
    pub qmp: Option<PathBuf>,
}

impl Machine {
    /// The default machine (2 CPUs, 256 MiB, no network) booting `boot`.
    pub fn new(boot: Boot) -> Self {
        Machine {
            boot,
            cpus: 2,
            memory: "256M".to_string(),
            network: Network::None,
            extra_args: Vec::new(),
            qmp: None,
        }
    }

    /// PVH boot of a kernel ELF with a command line.
    pub fn pvh(kernel: impl Into<PathBuf>, cmdline: impl Into<String>) -> Self {
        Machine::new(Boot::Pvh {
            kernel: kernel.into(),
            cmdline: cmdline.into(),
        })
    }

    /// ISO boot through the given firmware.
    pub fn iso(iso: impl Into<PathBuf>, firmware: Firmware) -> Self {
        Machine::new(Boot::Iso {
            iso: iso.into(),
            firmware,
        })
    }

    /// QEMU's arguments (without the program name).
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        push(&["-accel", "tcg,thread=multi", "-cpu", "max", "-M", "q35"]);
        push(&["-smp", &self.cpus.to_string(), "-m", &self.memory]);
        push(&[
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
        ]);
        let debug_exit = format!("isa-debug-exit,iobase={DEBUG_EXIT_IOBASE:#x},iosize=0x04");
        push(&["-device", &debug_exit]);
        if let Some(socket) = &self.qmp {
            push(&["-qmp", &qmp_arg(socket)]);
        }
        match &self.network {
            Network::None => {}
            Network::UsbNetUser { forwards } => {
                push(&["-device", "qemu-xhci,id=xhci"]);
                push(&["-device", "usb-net,bus=xhci.0,netdev=n0"]);
                let mut netdev = "user,id=n0".to_string();
                for forward in forwards {
                    netdev.push(',');
                    netdev.push_str(&forward.hostfwd());
                }
                push(&["-netdev", &netdev]);
            }
        }
        match &self.boot {
            Boot::Pvh { kernel, cmdline } => {
                args.push("-kernel".into());
                args.push(kernel.into());
                if !cmdline.is_empty() {
                    args.push("-append".into());
                    args.push(cmdline.into());
                }
            }
            Boot::Iso { iso, firmware } => {
                if *firmware == Firmware::Ovmf {
                    args.push("-bios".into());
                    args.push(OVMF_PATH.into());
                }
                args.push("-cdrom".into());
                args.push(iso.into());
            }
        }
        args.extend(self.extra_args.iter().map(OsString::from));
        args
    }

    /// The QEMU command, ready to have its stdio set and be spawned.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(qemu_program());
        cmd.args(self.args());
        cmd
    }
}

/// `-qmp`'s value for a unix socket: QEMU's option syntax doubles a comma inside a value.
pub fn qmp_arg(socket: &Path) -> String {
    let path = socket.to_string_lossy().replace(',', ",,");
    format!("unix:{path},server=on,wait=off")
}

/// Shows the command as a shell would take it (for `--dry-run` and error messages).
impl fmt::Display for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", shell_line(&qemu_program(), &self.args()))
    }
}

/// A program and its arguments, quoted for a POSIX shell.
pub fn shell_line(program: &str, args: &[OsString]) -> String {
    let mut line = shell_quote(program);
    for arg in args {
        line.push(' ');
        line.push_str(&shell_quote(&arg.to_string_lossy()));
    }
    line
}

/// Quotes one word for a POSIX shell when it needs quoting.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=.,:/+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(machine: &Machine) -> Vec<String> {
        machine
            .args()
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    fn has_pair(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn pvh_machine_is_tcg_q35_with_debug_exit() {
        let m = Machine::pvh("/k/tether-kernel", "test=all lockcheck=on");
        let args = args_of(&m);
        assert!(has_pair(&args, "-accel", "tcg,thread=multi"));
        assert!(!args.iter().any(|a| a.contains("kvm")));
        assert!(has_pair(&args, "-cpu", "max"));
        assert!(has_pair(&args, "-M", "q35"));
        assert!(has_pair(&args, "-smp", "2"));
        assert!(has_pair(&args, "-m", "256M"));
        assert!(has_pair(&args, "-serial", "stdio"));
        assert!(has_pair(&args, "-display", "none"));
        assert!(args.contains(&"-nodefaults".to_string()));
        assert!(args.contains(&"-no-reboot".to_string()));
        assert!(has_pair(
            &args,
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04"
        ));
        assert!(has_pair(&args, "-kernel", "/k/tether-kernel"));
        assert!(has_pair(&args, "-append", "test=all lockcheck=on"));
    }

    #[test]
    fn empty_cmdline_has_no_append() {
        let args = args_of(&Machine::pvh("/k", ""));
        assert!(!args.contains(&"-append".to_string()));
    }

    #[test]
    fn iso_boots_pick_firmware() {
        let bios = args_of(&Machine::iso("/t.iso", Firmware::SeaBios));
        assert!(has_pair(&bios, "-cdrom", "/t.iso"));
        assert!(!bios.contains(&"-bios".to_string()));
        assert!(!bios.contains(&"-kernel".to_string()));
        let uefi = args_of(&Machine::iso("/t.iso", Firmware::Ovmf));
        assert!(has_pair(&uefi, "-bios", OVMF_PATH));
        assert!(has_pair(&uefi, "-cdrom", "/t.iso"));
    }

    #[test]
    fn usb_net_user_preset() {
        let mut m = Machine::pvh("/k", "");
        m.network = Network::UsbNetUser {
            forwards: vec![
                PortForward::parse("tcp:8080:80").unwrap(),
                PortForward::parse("udp:5201:5201").unwrap(),
            ],
        };
        let args = args_of(&m);
        assert!(has_pair(&args, "-device", "qemu-xhci,id=xhci"));
        assert!(has_pair(&args, "-device", "usb-net,bus=xhci.0,netdev=n0"));
        assert!(has_pair(
            &args,
            "-netdev",
            "user,id=n0,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=udp:127.0.0.1:5201-:5201"
        ));
    }

    #[test]
    fn port_forward_parsing() {
        assert_eq!(
            PortForward::parse("8080:80"),
            Ok(PortForward {
                protocol: Protocol::Tcp,
                host_port: 8080,
                guest_port: 80
            })
        );
        assert!(PortForward::parse("tcp:0:80").is_err());
        assert!(PortForward::parse("sctp:1:2").is_err());
        assert!(PortForward::parse("tcp:70000:80").is_err());
        assert!(PortForward::parse("80").is_err());
    }

    #[test]
    fn extra_args_and_cpus() {
        let mut m = Machine::pvh("/k", "");
        m.cpus = 4;
        m.extra_args = vec!["-d".into(), "int".into()];
        let args = args_of(&m);
        assert!(has_pair(&args, "-smp", "4"));
        assert_eq!(&args[args.len() - 2..], ["-d", "int"]);
    }

    #[test]
    fn qmp_socket() {
        let mut m = Machine::pvh("/k", "");
        assert!(!args_of(&m).contains(&"-qmp".to_string()));
        m.qmp = Some("/logs/hotplug_cycles.qmp".into());
        assert!(has_pair(
            &args_of(&m),
            "-qmp",
            "unix:/logs/hotplug_cycles.qmp,server=on,wait=off"
        ));
        assert_eq!(
            qmp_arg(Path::new("/a,b/q.sock")),
            "unix:/a,,b/q.sock,server=on,wait=off"
        );
    }

    #[test]
    fn display_quotes_for_the_shell() {
        let m = Machine::pvh("/k", "test=all lockcheck=on");
        let line = m.to_string();
        assert!(line.starts_with("qemu-system-x86_64 -accel tcg,thread=multi "));
        assert!(line.ends_with("-kernel /k -append 'test=all lockcheck=on'"));
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
