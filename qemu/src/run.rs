//! `tether run` (boot Tether with the serial console on this terminal) and `tether iso`.

use crate::cli::{BootMode, RunOptions};
use crate::deps::{self, Need};
use crate::kernel_build;
use crate::paths;
use crate::preset::{Boot, Machine};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use tether_tests::protocol::KernelExit;

/// The kernel command line: the user's, after the keys the network options need.
pub fn kernel_cmdline(options: &RunOptions) -> String {
    let mut words = options.net.kernel_keys();
    if !options.cmdline.is_empty() {
        words.push(options.cmdline.clone());
    }
    words.join(" ")
}

/// The machine `options` describe, for a kernel ELF or an ISO at the usual places.
pub fn machine_for(options: &RunOptions) -> Machine {
    let boot = match options.boot {
        BootMode::Pvh => Boot::Pvh {
            kernel: options.kernel.clone().unwrap_or_else(paths::kernel_elf),
            cmdline: kernel_cmdline(options),
        },
        BootMode::Iso(firmware) => Boot::Iso {
            iso: paths::iso_path(),
            firmware,
        },
    };
    let mut machine = Machine::new(boot);
    machine.cpus = options.cpus;
    machine.memory = options.memory.clone();
    machine.extra_args = options.net.qemu_args();
    machine.extra_args.extend(options.qemu_args.iter().cloned());
    machine
}

/// Builds and boots Tether with QEMU's stdio (the serial console) on this terminal. Returns the
/// exit code for the runner: 0 when the kernel exits with success or QEMU ends normally.
pub fn run_interactive(options: &RunOptions) -> Result<i32> {
    let machine = machine_for(options);
    if options.dry_run {
        println!("{}", kernel_build::kernel_build_line());
        if let BootMode::Iso(_) = options.boot {
            let mkrescue =
                tether_image::grub_mkrescue_command(&paths::iso_staging_dir(), &paths::iso_path());
            let args: Vec<_> = mkrescue.get_args().map(ToOwned::to_owned).collect();
            println!(
                "# write {}/boot/grub/grub.cfg and the kernel, then:",
                paths::iso_staging_dir().display()
            );
            println!("{}", crate::preset::shell_line("grub-mkrescue", &args));
        }
        println!("{machine}");
        print!("{}", options.net.service_lines());
        return Ok(0);
    }
    let mut options = options.clone();
    for (wanted, got) in crate::appliance::avoid_busy_ports(&mut options.net.forwards) {
        eprintln!("tether: host port {wanted} is taken; using {got} instead");
    }
    let options = &options;
    let machine = machine_for(options);
    let mut needs = vec![Need::Qemu];
    if let BootMode::Iso(firmware) = options.boot {
        needs.push(Need::IsoTools);
        if firmware == crate::preset::Firmware::Ovmf {
            needs.push(Need::Ovmf);
        }
    }
    deps::ensure_host_tools(&needs)?;
    let kernel = kernel_build::prebuilt_or_build(options.kernel.as_deref())?;
    if let BootMode::Iso(_) = options.boot {
        build_iso(&kernel, &kernel_cmdline(options), &paths::iso_path())?;
    }
    eprintln!("tether: {machine}");
    eprint!("{}", options.net.service_lines());
    eprintln!("tether: serial console follows; Ctrl-C stops QEMU");
    let status = machine
        .command()
        .status()
        .context("starting qemu-system-x86_64")?;
    let exit = KernelExit::from_status(status.code());
    eprintln!("tether: {exit}");
    Ok(match exit {
        KernelExit::Success => 0,
        KernelExit::Failure => 1,
        KernelExit::Other(Some(0)) => 0,
        KernelExit::Other(Some(code)) => code,
        KernelExit::Other(None) => 130,
    })
}

/// `tether iso`: builds the kernel and the ISO.
pub fn build_iso_command(cmdline: &str, output: Option<&str>) -> Result<PathBuf> {
    tether_image::validate_cmdline(cmdline).map_err(anyhow::Error::msg)?;
    deps::ensure_host_tools(&[Need::IsoTools])?;
    let kernel = kernel_build::build_kernel()?;
    let output = output.map(PathBuf::from).unwrap_or_else(paths::iso_path);
    build_iso(&kernel, cmdline, &output)
}

fn build_iso(kernel: &Path, cmdline: &str, output: &Path) -> Result<PathBuf> {
    eprintln!("tether: building {}", output.display());
    tether_image::build_iso(&tether_image::IsoSpec {
        kernel_elf: kernel,
        cmdline,
        output,
        staging_dir: &paths::iso_staging_dir(),
    })
}
