//! The 8254 PIT, used once to calibrate the TSC and the local APIC timer: channel 2 in one-shot
//! mode with its gate under our control, polled through port 0x61.

use x86_64::instructions::port::Port;

const PIT_HZ: u64 = 1_193_182;

/// Busy-waits `micros` (at most ~54 ms) by the PIT and calls `during` at start and end.
pub fn wait_micros(micros: u64, mut at_start: impl FnMut(), mut at_end: impl FnMut()) {
    let count = (PIT_HZ * micros / 1_000_000).clamp(1, 0xFFFF) as u16;
    // SAFETY: ports 0x42, 0x43, 0x61 belong to the PIT and the speaker gate; nothing else in the
    // kernel uses them, and this runs on the boot CPU before other CPUs start.
    unsafe {
        let mut gate = Port::<u8>::new(0x61);
        let mut command = Port::<u8>::new(0x43);
        let mut channel2 = Port::<u8>::new(0x42);
        let g = gate.read();
        gate.write((g & !0x02) & !0x01); // speaker off, gate low
        command.write(0b1011_0000); // channel 2, lobyte/hibyte, mode 0, binary
        channel2.write(count as u8);
        channel2.write((count >> 8) as u8);
        let g = gate.read();
        at_start();
        gate.write(g | 0x01); // gate high: counting starts
        while gate.read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
        at_end();
        gate.write(g & !0x01);
    }
}

/// Masks the legacy 8259 PICs after moving their vectors out of the exception range, so a
/// spurious PIC interrupt can never look like a CPU exception.
pub fn disable_legacy_pic() {
    // SAFETY: standard 8259 initialisation sequence on its fixed ports.
    unsafe {
        let mut m_cmd = Port::<u8>::new(0x20);
        let mut m_data = Port::<u8>::new(0x21);
        let mut s_cmd = Port::<u8>::new(0xA0);
        let mut s_data = Port::<u8>::new(0xA1);
        m_cmd.write(0x11);
        s_cmd.write(0x11);
        m_data.write(0x20);
        s_data.write(0x28);
        m_data.write(4);
        s_data.write(2);
        m_data.write(1);
        s_data.write(1);
        m_data.write(0xFF);
        s_data.write(0xFF);
    }
}
