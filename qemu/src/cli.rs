//! Command-line parsing of the `tether` runner.

use crate::preset::{Firmware, PortForward};
use crate::test_run::TestOptions;
use std::path::PathBuf;

/// Usage text.
pub const USAGE: &str = "\
tether: build Tether and run it in QEMU (TCG), run its tests, its benchmarks.

USAGE (from the repository, through cargo):
    cargo run --release [-- run] [RUN OPTIONS]   build the kernel and boot it; serial console here
    cargo run --release -- test [TEST OPTIONS]   run every test; ends with `N passed, N failed`
    cargo run --release -- iso [--append CMDLINE] [--output PATH]
                                                 build the bootable hybrid ISO (target/tether.iso)
    cargo run --release -- bench boot [--boots N] [--verbose]
                                                 time QEMU start -> ready line, N boots (default 10)
    cargo run --release -- bench net [NET BENCH OPTIONS]
                                                 iperf3 through Tether and through the Linux guest
                                                 of ../shared/peer-linux on the same devices; one
                                                 table with ratios (root: uses a network namespace)
    cargo run --release -- bench recovery [--policies LIST] [--loads LIST] [--wedges N]
                                          [--no-unplug] [--append KEYS] [--verbose]
                                                 wedge the usb-net N times per TX watchdog policy
                                                 (default progress,classic) and load (idle,busy,
                                                 light); time to detection, to the first frame
                                                 after the reset, to TCP moving; then an
                                                 unplug/replug under load
    cargo run --release -- profile [--gdb ADDR] [--samples N] [--interval MS] [--top N]
                                   [--kernel ELF]
                                                 sample a running Tether's vCPUs through QEMU's
                                                 gdbstub (boot it with `--qemu-arg -s`; ADDR
                                                 default tcp::1234, or unix:PATH), 200 stops
                                                 150 ms apart; samples per kernel function

RUN OPTIONS:
    --boot pvh|bios|uefi     pvh: QEMU loads the ELF (-kernel, default); bios: the ISO under
                             SeaBIOS; uefi: the ISO under OVMF
    --append CMDLINE         kernel command line (for bios/uefi it goes into grub.cfg)
    --smp N                  CPUs (default 2)
    --memory SIZE            guest memory as QEMU's -m takes it (default 256M)
    --net usb|virtio|usb,virtio|none
                             NICs (default usb: qemu-xhci + usb-net); each on its own back-end
    --rndis                  usb-net in its RNDIS configuration (kernel usbnet=rndis)
    --tap IFNAME             back-ends on an existing host tap device instead of user
                             networking (ip tuntap add dev IFNAME mode tap user $USER)
    --forward [tcp:|udp:]HOST:GUEST
                             also forward 127.0.0.1:HOST to the guest's port GUEST; the
                             services' ports are forwarded by default (5201->5201, 8080->80,
                             8007->7, 8009->9, 8019->19; a busy host port moves to a free one)
    --usb-host VVVV:PPPP|BUS:ADDR
                             pass a real USB device through (vendor:product in hex, or lsusb's
                             bus and device numbers); may be repeated
    --qemu-arg ARG           pass ARG to QEMU as is; may be repeated
    --kernel ELF             boot this kernel ELF instead of building one (also for test, bench)
    --dry-run                print the commands instead of running them

NET BENCH OPTIONS:
    --devices LIST           usb-ecm,usb-rndis,virtio (default usb-ecm)
    --backends LIST          user,tap (default both)
    --runs N                 iperf3 runs per direction, median reported (default 3)
    --time S                 seconds per run (default 10)
    --no-peer                Tether only
    --peer-dir DIR           the peer (default ../shared/peer-linux, or $TETHER_PEER_DIR)
    --verbose                echo Tether's serial output

TEST OPTIONS:
    --verbose                echo every boot's serial output, prefixed with its name
    --skip-host-tests        do not run `cargo test` on the host crates
    --filter TEXT            run only the boots whose name contains TEXT

ENVIRONMENT:
    TETHER_QEMU              QEMU binary to run instead of qemu-system-x86_64

Missing host packages (qemu-system-x86, grub-*, xorriso, mtools, ovmf) are installed with
apt-get when run as root; the kernel's Rust target with rustup.
";

/// How `tether run` boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootMode {
    /// QEMU `-kernel` through the PVH note.
    #[default]
    Pvh,
    /// The ISO through firmware.
    Iso(Firmware),
}

/// Options of `tether run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// How to boot.
    pub boot: BootMode,
    /// Kernel command line.
    pub cmdline: String,
    /// CPUs.
    pub cpus: u32,
    /// Memory (`-m`).
    pub memory: String,
    /// The appliance's NICs, back-end, forwards and passthrough.
    pub net: crate::appliance::ApplianceNet,
    /// Extra QEMU arguments.
    pub qemu_args: Vec<String>,
    /// Print commands instead of running them.
    pub dry_run: bool,
    /// Boot this kernel ELF instead of building one.
    pub kernel: Option<PathBuf>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            boot: BootMode::Pvh,
            cmdline: String::new(),
            cpus: 2,
            memory: "256M".to_string(),
            net: crate::appliance::ApplianceNet::default(),
            qemu_args: Vec::new(),
            dry_run: false,
            kernel: None,
        }
    }
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cli {
    /// Boot Tether interactively.
    Run(RunOptions),
    /// Run every test.
    Test(TestOptions),
    /// Build the ISO.
    Iso {
        /// Kernel command line in grub.cfg.
        cmdline: String,
        /// Where to write it (default target/tether.iso).
        output: Option<String>,
    },
    /// Boot benchmark.
    BenchBoot {
        /// Number of boots.
        boots: usize,
        /// Echo serial output.
        verbose: bool,
        /// Boot this kernel ELF instead of building one.
        kernel: Option<PathBuf>,
    },
    /// Network benchmark against the Linux peer.
    BenchNet(crate::bench_net::NetBenchOptions),
    /// Recovery benchmark.
    BenchRecovery(crate::bench_recovery::RecoveryOptions),
    /// Sampling profiler through QEMU's gdbstub.
    Profile(crate::profile::ProfileOptions),
    /// Print usage.
    Help,
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Cli, String> {
    let mut args = args.iter().map(String::as_str).peekable();
    let command = match args.peek() {
        Some(first) if !first.starts_with('-') => args.next().unwrap(),
        _ => "run",
    };
    let mut rest = Args {
        args: args.collect(),
        index: 0,
    };
    match command {
        "run" => parse_run(&mut rest).map(Cli::Run),
        "test" => {
            let mut options = TestOptions::default();
            while let Some(flag) = rest.next_flag()? {
                match flag {
                    "--verbose" | "-v" => options.verbose = true,
                    "--skip-host-tests" => options.skip_host_tests = true,
                    "--filter" => options.filter = Some(rest.value(flag)?.to_string()),
                    "--kernel" => options.kernel = Some(rest.value(flag)?.into()),
                    _ => return Err(rest.unknown(flag, "test")),
                }
            }
            Ok(Cli::Test(options))
        }
        "iso" => {
            let (mut cmdline, mut output) = (String::new(), None);
            while let Some(flag) = rest.next_flag()? {
                match flag {
                    "--append" => cmdline = rest.value(flag)?.to_string(),
                    "--output" | "-o" => output = Some(rest.value(flag)?.to_string()),
                    _ => return Err(rest.unknown(flag, "iso")),
                }
            }
            Ok(Cli::Iso { cmdline, output })
        }
        "bench" => {
            match rest.args.first() {
                Some(&"boot") => rest.index = 1,
                Some(&"net") => {
                    rest.index = 1;
                    return parse_bench_net(&mut rest).map(Cli::BenchNet);
                }
                Some(&"recovery") => {
                    rest.index = 1;
                    return parse_bench_recovery(&mut rest).map(Cli::BenchRecovery);
                }
                Some(other) => {
                    return Err(format!(
                        "unknown benchmark {other:?} (known: boot, net, recovery)"
                    ))
                }
                None => {
                    return Err("`bench` needs a benchmark name: `bench boot`, `bench net`".into())
                }
            }
            let (mut boots, mut verbose, mut kernel) = (10, false, None);
            while let Some(flag) = rest.next_flag()? {
                match flag {
                    "--boots" => boots = rest.number(flag)? as usize,
                    "--verbose" | "-v" => verbose = true,
                    "--kernel" => kernel = Some(rest.value(flag)?.into()),
                    _ => return Err(rest.unknown(flag, "bench boot")),
                }
            }
            Ok(Cli::BenchBoot {
                boots,
                verbose,
                kernel,
            })
        }
        "profile" => {
            let mut options = crate::profile::ProfileOptions::default();
            while let Some(flag) = rest.next_flag()? {
                match flag {
                    "--gdb" => {
                        options.stub = crate::profile::StubAddress::parse(rest.value(flag)?)?
                    }
                    "--samples" => options.samples = rest.number(flag)?.max(1),
                    "--interval" => {
                        options.interval =
                            std::time::Duration::from_millis(rest.number(flag)?.into())
                    }
                    "--kernel" => options.kernel = rest.value(flag)?.into(),
                    "--top" => options.top = rest.number(flag)? as usize,
                    _ => return Err(rest.unknown(flag, "profile")),
                }
            }
            Ok(Cli::Profile(options))
        }
        "help" | "--help" | "-h" => Ok(Cli::Help),
        other => Err(format!("unknown command {other:?}; try `help`")),
    }
}

fn parse_bench_net(rest: &mut Args<'_>) -> Result<crate::bench_net::NetBenchOptions, String> {
    use crate::bench_net::{Backend, Device, NetBenchOptions};
    let mut options = NetBenchOptions::default();
    while let Some(flag) = rest.next_flag()? {
        match flag {
            "--devices" => {
                options.devices = rest
                    .value(flag)?
                    .split(',')
                    .map(Device::parse)
                    .collect::<Result<_, _>>()?
            }
            "--backends" => {
                options.backends = rest
                    .value(flag)?
                    .split(',')
                    .map(Backend::parse)
                    .collect::<Result<_, _>>()?
            }
            "--runs" => options.runs = rest.number(flag)? as usize,
            "--time" => options.seconds = rest.number(flag)?,
            "--no-peer" => options.peer = false,
            "--peer-dir" => options.peer_dir = rest.value(flag)?.into(),
            "--kernel" => options.kernel = Some(rest.value(flag)?.into()),
            "--verbose" | "-v" => options.verbose = true,
            _ => return Err(rest.unknown(flag, "bench net")),
        }
    }
    Ok(options)
}

fn parse_bench_recovery(
    rest: &mut Args<'_>,
) -> Result<crate::bench_recovery::RecoveryOptions, String> {
    use crate::bench_recovery::{Load, RecoveryOptions};
    use tether_netstack::watchdog::Policy;
    let mut options = RecoveryOptions::default();
    while let Some(flag) = rest.next_flag()? {
        match flag {
            "--policies" => {
                options.policies = rest
                    .value(flag)?
                    .split(',')
                    .map(|p| {
                        Policy::parse(p)
                            .map(|_| p.to_string())
                            .map_err(|e| e.to_string())
                    })
                    .collect::<Result<_, _>>()?
            }
            "--loads" => {
                options.loads = rest
                    .value(flag)?
                    .split(',')
                    .map(Load::parse)
                    .collect::<Result<_, _>>()?
            }
            "--wedges" => options.wedges = rest.number(flag)? as usize,
            "--no-unplug" => options.unplug = false,
            "--append" => options.append = rest.value(flag)?.to_string(),
            "--kernel" => options.kernel = Some(rest.value(flag)?.into()),
            "--verbose" | "-v" => options.verbose = true,
            _ => return Err(rest.unknown(flag, "bench recovery")),
        }
    }
    Ok(options)
}

fn parse_run(rest: &mut Args<'_>) -> Result<RunOptions, String> {
    let mut options = RunOptions::default();
    while let Some(flag) = rest.next_flag()? {
        match flag {
            "--boot" => {
                options.boot = match rest.value(flag)? {
                    "pvh" => BootMode::Pvh,
                    "bios" => BootMode::Iso(Firmware::SeaBios),
                    "uefi" => BootMode::Iso(Firmware::Ovmf),
                    other => return Err(format!("--boot {other:?}: expected pvh, bios or uefi")),
                }
            }
            "--append" => options.cmdline = rest.value(flag)?.to_string(),
            "--smp" => options.cpus = rest.number(flag)?,
            "--memory" | "-m" => options.memory = rest.value(flag)?.to_string(),
            "--net" => {
                let value = rest.value(flag)?;
                let (mut usb, mut virtio) = (false, false);
                for word in value.split(',') {
                    match word {
                        "usb" | "usb-user" => usb = true,
                        "virtio" => virtio = true,
                        "none" if value == "none" => {}
                        _ => {
                            return Err(format!(
                                "--net {value:?}: expected usb, virtio, usb,virtio or none"
                            ))
                        }
                    }
                }
                options.net.usb_net = usb;
                options.net.virtio = virtio;
            }
            "--rndis" => options.net.usb_config = crate::appliance::UsbNetConfig::Rndis,
            "--tap" => {
                let name = rest.value(flag)?;
                let valid = !name.is_empty()
                    && name.len() < 16
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if !valid {
                    return Err(format!("--tap {name:?}: not an interface name"));
                }
                options.net.backend = crate::appliance::Backend::Tap(name.to_string());
            }
            "--forward" => options
                .net
                .forwards
                .push(PortForward::parse(rest.value(flag)?)?),
            "--usb-host" => options
                .net
                .usb_host
                .push(crate::appliance::UsbHost::parse(rest.value(flag)?)?),
            "--qemu-arg" => options.qemu_args.push(rest.value(flag)?.to_string()),
            "--dry-run" => options.dry_run = true,
            "--kernel" => options.kernel = Some(rest.value(flag)?.into()),
            "--help" | "-h" => return Err(USAGE.to_string()),
            _ => return Err(rest.unknown(flag, "run")),
        }
    }
    if options.cpus == 0 {
        return Err("--smp must be at least 1".to_string());
    }
    Ok(options)
}

struct Args<'a> {
    args: Vec<&'a str>,
    index: usize,
}

impl<'a> Args<'a> {
    fn next_flag(&mut self) -> Result<Option<&'a str>, String> {
        let Some(&arg) = self.args.get(self.index) else {
            return Ok(None);
        };
        self.index += 1;
        if !arg.starts_with('-') {
            return Err(format!("unexpected argument {arg:?}"));
        }
        Ok(Some(arg))
    }

    fn value(&mut self, flag: &str) -> Result<&'a str, String> {
        let value = self
            .args
            .get(self.index)
            .copied()
            .ok_or_else(|| format!("{flag} needs a value"))?;
        self.index += 1;
        Ok(value)
    }

    fn number(&mut self, flag: &str) -> Result<u32, String> {
        let value = self.value(flag)?;
        value
            .parse()
            .map_err(|_| format!("{flag} {value:?}: expected a number"))
    }

    fn unknown(&self, flag: &str, command: &str) -> String {
        format!("unknown option {flag:?} for `{command}`; try `help`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(line: &str) -> Result<Cli, String> {
        let args: Vec<String> = line.split_whitespace().map(str::to_string).collect();
        parse(&args)
    }

    #[test]
    fn no_arguments_runs_with_defaults() {
        assert_eq!(parse_str(""), Ok(Cli::Run(RunOptions::default())));
        assert_eq!(parse_str("--smp 4"), parse_str("run --smp 4"));
    }

    #[test]
    fn profile_options() {
        let Ok(Cli::Profile(o)) =
            parse_str("profile --gdb unix:/tmp/g --samples 50 --interval 20 --top 5 --kernel k")
        else {
            panic!()
        };
        assert_eq!(o.stub, crate::profile::StubAddress::Unix("/tmp/g".into()));
        assert_eq!((o.samples, o.interval.as_millis(), o.top), (50, 20, 5));
        assert_eq!(o.kernel, std::path::PathBuf::from("k"));
        assert_eq!(
            parse_str("profile"),
            Ok(Cli::Profile(crate::profile::ProfileOptions::default()))
        );
        assert!(parse_str("profile --gdb tcp::x").is_err());
        assert!(parse_str("profile --fast").is_err());
    }

    #[test]
    fn run_options() {
        let Ok(Cli::Run(o)) = parse_str("run --boot uefi --append lockcheck=on --smp 4 -m 1G --forward 8080:80 --qemu-arg -s --dry-run") else {
            panic!()
        };
        assert_eq!(o.boot, BootMode::Iso(Firmware::Ovmf));
        assert_eq!(o.cmdline, "lockcheck=on");
        assert_eq!(o.cpus, 4);
        assert_eq!(o.memory, "1G");
        assert!(o.net.usb_net);
        assert_eq!(
            o.net.forwards.len(),
            crate::appliance::DEFAULT_FORWARDS.len() + 1
        );
        assert_eq!(o.qemu_args, ["-s"]);
        assert!(o.dry_run);
    }

    #[test]
    fn test_options() {
        assert_eq!(parse_str("test"), Ok(Cli::Test(TestOptions::default())));
        assert_eq!(
            parse_str("test --verbose --skip-host-tests --filter iso"),
            Ok(Cli::Test(TestOptions {
                verbose: true,
                skip_host_tests: true,
                filter: Some("iso".into()),
                kernel: None
            }))
        );
    }

    #[test]
    fn bench_and_iso() {
        assert_eq!(
            parse_str("bench boot"),
            Ok(Cli::BenchBoot {
                boots: 10,
                verbose: false,
                kernel: None
            })
        );
        assert_eq!(
            parse_str("bench boot --boots 3"),
            Ok(Cli::BenchBoot {
                boots: 3,
                verbose: false,
                kernel: None
            })
        );
        assert!(parse_str("bench").is_err());
        assert!(parse_str("bench disk").is_err());
        let Ok(Cli::BenchNet(net)) =
            parse_str("bench net --devices usb-ecm,virtio --backends tap --runs 2 --no-peer")
        else {
            panic!("bench net not parsed")
        };
        assert_eq!(
            net.devices,
            [
                crate::bench_net::Device::UsbEcm,
                crate::bench_net::Device::Virtio
            ]
        );
        assert_eq!(net.backends, [crate::bench_net::Backend::Tap]);
        assert_eq!((net.runs, net.peer), (2, false));
        let Ok(Cli::BenchRecovery(recovery)) =
            parse_str("bench recovery --policies progress:3,classic --loads light --wedges 2")
        else {
            panic!("bench recovery not parsed")
        };
        assert_eq!(recovery.policies, ["progress:3", "classic"]);
        assert_eq!(recovery.loads, [crate::bench_recovery::Load::Light]);
        assert_eq!(recovery.wedges, 2);
        assert!(parse_str("bench recovery --policies fast").is_err());
        assert!(parse_str("bench net --devices e1000")
            .unwrap_err()
            .contains("e1000"));
        assert_eq!(
            parse_str("iso --append a=1 -o x.iso"),
            Ok(Cli::Iso {
                cmdline: "a=1".into(),
                output: Some("x.iso".into())
            })
        );
    }

    #[test]
    fn network_options() {
        use crate::appliance::{Backend, UsbNetConfig};
        let Ok(Cli::Run(o)) =
            parse_str("run --net usb,virtio --rndis --tap tether0 --usb-host 0b95:1790")
        else {
            panic!()
        };
        assert!(o.net.usb_net && o.net.virtio);
        assert_eq!(o.net.usb_config, UsbNetConfig::Rndis);
        assert_eq!(o.net.backend, Backend::Tap("tether0".into()));
        assert_eq!(o.net.usb_host.len(), 1);
        let Ok(Cli::Run(o)) = parse_str("run --net none") else {
            panic!()
        };
        assert!(o.net.is_empty());
        assert!(parse_str("run --net wifi").is_err());
        assert!(parse_str("run --net none,usb").is_err());
        assert!(parse_str("run --tap 'bad name'").is_err());
        assert!(parse_str("run --usb-host 12").is_err());
    }

    #[test]
    fn errors_are_clear() {
        assert!(parse_str("frobnicate")
            .unwrap_err()
            .contains("unknown command"));
        assert!(parse_str("test --fast").unwrap_err().contains("--fast"));
        assert!(parse_str("run --smp")
            .unwrap_err()
            .contains("needs a value"));
        assert!(parse_str("run --smp two").unwrap_err().contains("number"));
        assert!(parse_str("run --boot floppy").is_err());
        assert!(parse_str("run --smp 0").is_err());
        assert_eq!(parse_str("help"), Ok(Cli::Help));
    }
}
