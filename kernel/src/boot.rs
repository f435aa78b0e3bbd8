//! The boot sequence, from the trampoline's call to the ready line.

use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;

use tether_kcore::bootinfo::{self, BootInfo, BootInfoError, PhysMemory};
use tether_kcore::cmdline::{Cmdline, LevelSpec};
use tether_usb::matching::NetFunction;

use crate::arch::{apic, gdt, idt, interrupts, ioapic, pit, smp};
use crate::mem::stacks::KernelStack;
use crate::sync::raw::RawSpinLock;
use crate::{cpu, mem, pci, platform, sched, time, trace};

/// Command-line keys the kernel knows; anything else gets one warning line.
pub const KNOWN_KEYS: &[&str] = &[
    "log",
    "lockcheck",
    "test",
    "smp",
    "usbdrivers",
    "usbnet",
    "ip",
    "gw",
    "ip.*",
    "gw.*",
    "services",
    "watchdog",
    "watchdog_ms",
    "faults",
    "txqueue",
    "offload",
];

/// Boot info as handed over: reads within the first 4 GiB, which the boot page tables map.
struct BootMemory;

impl PhysMemory for BootMemory {
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), BootInfoError> {
        let len = buf.len() as u64;
        if phys == 0 || phys.checked_add(len).is_none_or(|end| end > 4 << 30) {
            return Err(BootInfoError::unreadable(phys, buf.len()));
        }
        // SAFETY: identity-mapped by the boot page tables, not the null address, and the kernel
        // writes nothing there before parsing finishes.
        unsafe { core::ptr::copy_nonoverlapping(phys as *const u8, buf.as_mut_ptr(), buf.len()) };
        Ok(())
    }
}

/// What later stages need from boot.
pub struct BootState {
    pub cmdline: String,
    pub loader: &'static str,
}

static STATE: spin::Once<BootState> = spin::Once::new();
static PLATFORM: spin::Once<platform::Platform> = spin::Once::new();
static AP_STACKS: RawSpinLock<Vec<Option<KernelStack>>> = RawSpinLock::new(Vec::new());

/// Where an ISA IRQ arrives (GSI, polarity, trigger), per the firmware's overrides.
pub fn isa_irq(irq: u8) -> platform::IsaOverride {
    PLATFORM.get().map_or(
        platform::IsaOverride {
            irq,
            gsi: u32::from(irq),
            active_low: false,
            level_triggered: false,
        },
        |p| p.isa_irq(irq),
    )
}

pub fn state() -> &'static BootState {
    STATE.get().expect("boot state")
}

#[no_mangle]
extern "C" fn kernel_entry(loader_magic: u32, info_phys: u32) -> ! {
    time::mark_boot();
    crate::console::init();
    mem::heap::init_early();
    pit::disable_legacy_pic();
    idt::load();
    trace::init();

    let boot = match parse_boot_info(loader_magic, info_phys) {
        Ok(boot) => boot,
        Err(error) => panic!("cannot read boot information: {error}"),
    };
    let loader = match boot.loader {
        bootinfo::Loader::Pvh => "PVH",
        bootinfo::Loader::Multiboot2 => "multiboot2",
    };
    kprintln!(
        "tether: booted by {} ({}), command line '{}'",
        loader,
        boot.bootloader_name.as_deref().unwrap_or("-"),
        boot.cmdline
    );
    apply_cmdline(&boot.cmdline);

    let boot_apic_id = {
        apic::init_this_cpu(true);
        apic::id()
    };
    let platform = platform::discover(boot.rsdp, boot_apic_id);
    mem::init(&boot);
    log::info!(
        "memory: {} MiB usable, {} MiB free after boot; kernel {:#x}..{:#x}",
        boot.usable_ranges()
            .iter()
            .map(|r| r.end - r.start)
            .sum::<u64>()
            >> 20,
        (mem::frames::free_frames() * 4096) >> 20,
        mem::kernel_image().start,
        mem::kernel_image().end
    );
    gdt::init_this_cpu();
    let cpu0 = cpu::init_this(0, boot_apic_id);
    time::calibrate();
    *PM_TIMER.lock() = platform.pm_timer;
    log::info!(
        "time: TSC {} MHz, local APIC in {} mode",
        time::tsc_mhz(),
        if apic::is_x2apic() { "x2APIC" } else { "xAPIC" }
    );
    sched::init_this_cpu(cpu0, None);
    ioapic::init(&platform);
    cpu0.online.store(true, Ordering::Release);
    STATE.call_once(|| BootState {
        cmdline: boot.cmdline.clone(),
        loader,
    });
    interrupts::enable();

    // Before the other CPUs run: enumeration sizes BARs (see pci::init).
    pci::init();
    start_application_processors(&platform, &boot.cmdline);
    PLATFORM.call_once(|| platform);
    sched::Spawn::new("main").start(main_thread);
    sched::idle_loop()
}

fn parse_boot_info(loader_magic: u32, info_phys: u32) -> Result<BootInfo, BootInfoError> {
    if loader_magic == bootinfo::MULTIBOOT2_LOADER_MAGIC {
        bootinfo::parse_multiboot2(&BootMemory, u64::from(info_phys))
    } else {
        bootinfo::parse_pvh(&BootMemory, u64::from(info_phys))
    }
}

fn apply_cmdline(text: &str) {
    let cmdline = match Cmdline::parse(text) {
        Ok(c) => c,
        Err(error) => {
            kprintln!("tether: warning: command line not understood ({error}); using defaults");
            return;
        }
    };
    for key in cmdline.unknown_keys(KNOWN_KEYS) {
        // GRUB passes the kernel's path as the first word.
        if !key.starts_with('/') {
            kprintln!("tether: warning: unknown command-line key '{key}' ignored");
        }
    }
    if let Some(spec) = cmdline.get("log") {
        match LevelSpec::parse(spec) {
            Ok(spec) => trace::set_levels(spec),
            Err(error) => kprintln!("tether: warning: log={spec}: {error}"),
        }
    }
    match cmdline.bool("usbdrivers") {
        Ok(Some(on)) => crate::usb::driver::set_binding(on),
        Ok(None) => {}
        Err(error) => kprintln!("tether: warning: {error}"),
    }
    if let Some(value) = cmdline.get("usbnet") {
        match NetFunction::parse(value) {
            Some(function) => crate::usb::driver::set_net_preference(function),
            None => kprintln!("tether: warning: usbnet={value}: expected ecm or rndis; using ecm"),
        }
    }
    match cmdline.bool("lockcheck") {
        Ok(Some(on)) => crate::sync::checker::set_enabled(on),
        Ok(None) => {}
        Err(error) => kprintln!("tether: warning: {error}"),
    }
}

fn start_application_processors(platform: &platform::Platform, cmdline: &str) {
    let limit = Cmdline::parse(cmdline)
        .ok()
        .and_then(|c| c.number::<usize>("smp").ok().flatten())
        .unwrap_or(cpu::MAX_CPUS)
        .clamp(1, cpu::MAX_CPUS);
    let ids: Vec<u32> = platform.cpu_apic_ids.iter().copied().take(limit).collect();
    AP_STACKS.lock().resize_with(ids.len(), || None);
    for (index, &apic_id) in ids.iter().enumerate().skip(1) {
        let Some(stack) = KernelStack::new(sched::DEFAULT_STACK_SIZE) else {
            log::error!("smp: no memory for CPU {index}'s stack");
            break;
        };
        let top = stack.top();
        AP_STACKS.lock()[index] = Some(stack);
        if smp::start_ap(apic_id, index, top, ap_entry) {
            while !cpu::get(index).is_some_and(|c| c.online.load(Ordering::Acquire)) {
                core::hint::spin_loop();
            }
        } else {
            log::error!("smp: CPU {index} (APIC id {apic_id}) did not start");
        }
    }
    log::info!(
        "smp: {} of {} CPUs online",
        cpu::online_count(),
        platform.cpu_apic_ids.len()
    );
}

extern "C" fn ap_entry(index: u64) -> ! {
    let index = index as usize;
    smp::AP_STARTED.store(true, Ordering::SeqCst);
    idt::load();
    gdt::init_this_cpu();
    apic::init_this_cpu(false);
    let cpu = cpu::init_this(index, apic::id());
    let stack = AP_STACKS.lock()[index].take();
    sched::init_this_cpu(cpu, stack);
    cpu.online.store(true, Ordering::Release);
    interrupts::enable();
    sched::idle_loop()
}

/// The ACPI PM timer the clock is refined against (found with the platform at boot).
static PM_TIMER: crate::sync::raw::RawSpinLock<Option<crate::arch::pmtimer::PmTimer>> =
    crate::sync::raw::RawSpinLock::new(None);

fn main_thread() {
    crate::deferred::init_callouts();
    // Copied out first: the guard of a raw spin lock keeps interrupts off, and must not be
    // held across the spawn (the new thread may run at once and sleep).
    let pm_timer = *PM_TIMER.lock();
    if let Some(pm) = pm_timer {
        crate::sched::Spawn::new("clock-refine").start(move || time::refine(pm));
    }
    let cmdline = Cmdline::parse(&state().cmdline).ok();
    let test = cmdline
        .as_ref()
        .and_then(|c| c.get("test"))
        .map(String::from);
    kprintln!(
        "TETHER READY cpus={} uptime_us={}",
        cpu::online_count(),
        time::now_us()
    );
    if let Some(which) = test {
        crate::ktest::run(&which);
    } else {
        // virtio first: it names its interfaces at once, so they come first on every boot.
        crate::virtio::start();
        crate::usb::start();
        crate::shell::start();
        kprint!("tether> ");
    }
}
