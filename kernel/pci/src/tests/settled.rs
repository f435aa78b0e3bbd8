//! `SettledBars`: a driver library's own BAR sizing is answered from enumeration, and neither
//! BAR nor decode writes reach the device.

use super::addr;
use crate::access::write_config_dword;
use crate::fake::{FakeConfigSpace, FakeFunction};
use crate::settled::{sizing_readback, SettledBars};
use crate::{enumerate, read_config_dword, PciAddress};

const COMMAND: u16 = 0x04;

/// The usual sizing dance (as virtio-drivers' `bar_info` does it): decode off, all-ones into
/// the BAR (and the next one for a 64-bit BAR), read the mask, restore. Returns the size.
fn size_by_probing(
    read: &mut dyn FnMut(u16) -> u32,
    write: &mut dyn FnMut(u16, u32),
    slot: u16,
) -> u64 {
    let offset = 0x10 + 4 * slot;
    let command = read(COMMAND) & 0xffff;
    write(COMMAND, command & !0b11);
    let original = read(offset);
    write(offset, u32::MAX);
    let mut mask = u64::from(read(offset));
    if original & 0b111 == 0b100 {
        let original_high = read(offset + 4);
        write(offset + 4, u32::MAX);
        mask |= u64::from(read(offset + 4)) << 32;
        write(offset + 4, original_high);
    } else if mask != 0 {
        mask |= 0xffff_ffff << 32;
    }
    write(offset, original);
    write(COMMAND, command);
    let flags = if original & 1 == 1 { 0b11 } else { 0b1111 };
    (!(mask & !flags)).wrapping_add(1)
}

fn machine() -> (FakeConfigSpace, PciAddress) {
    let fake = FakeConfigSpace::new();
    let device = addr(0, 3, 0);
    fake.insert(
        device,
        FakeFunction::endpoint(0x1af4, 0x1000, 0x02, 0x00, 0x00)
            .io_bar(0, 0xc040, 0x20)
            .mem32_bar(1, 0xfebf_e000, 0x1000, false)
            .mem64_bar(4, 0xfe00_0000, 0x4000, true)
            .command(0b111),
    );
    (fake, device)
}

fn direct_sizes(fake: &FakeConfigSpace, device: PciAddress) -> [u64; 6] {
    let mut sizes = [0; 6];
    for slot in [0u16, 1, 4] {
        sizes[usize::from(slot)] = size_by_probing(
            &mut |o| read_config_dword(fake, device, o),
            &mut |o, v| write_config_dword(fake, device, o, v),
            slot,
        );
    }
    sizes
}

#[test]
fn sizing_is_answered_from_enumeration_without_touching_the_device() {
    let (fake, device) = machine();
    let functions = enumerate(&fake);
    let function = functions.iter().find(|f| f.address == device).unwrap();
    let expected = direct_sizes(&fake, device);
    assert_eq!(expected[0], 0x20);
    assert_eq!(expected[1], 0x1000);
    assert_eq!(expected[4], 0x4000);

    let mut settled = SettledBars::new(function.bars);
    let writes_before = fake.writes();
    let bars_before: [u32; 6] = core::array::from_fn(|i| fake.peek(device, 0x10 + 4 * i as u16));
    for slot in [0u16, 1, 4] {
        let settled_cell = core::cell::RefCell::new(&mut settled);
        let size = size_by_probing(
            &mut |o| {
                settled_cell
                    .borrow()
                    .read(o)
                    .unwrap_or_else(|| read_config_dword(&fake, device, o))
            },
            &mut |o, v| {
                let forward = settled_cell
                    .borrow_mut()
                    .write(o, v, || read_config_dword(&fake, device, COMMAND));
                if let Some(value) = forward {
                    write_config_dword(&fake, device, o, value);
                }
            },
            slot,
        );
        assert_eq!(size, expected[usize::from(slot)], "slot {slot}");
    }
    assert_eq!(fake.writes(), writes_before, "a write reached the device");
    let bars_after: [u32; 6] = core::array::from_fn(|i| fake.peek(device, 0x10 + 4 * i as u16));
    assert_eq!(bars_after, bars_before);
    assert_eq!(
        fake.command(device) & 0b11,
        0b11,
        "decoding was switched off"
    );
}

#[test]
fn readback_matches_the_device_for_every_bar_kind() {
    let (fake, device) = machine();
    let functions = enumerate(&fake);
    let bars = functions.iter().find(|f| f.address == device).unwrap().bars;
    for slot in 0..6u16 {
        let offset = 0x10 + 4 * slot;
        let original = fake.peek(device, offset);
        write_config_dword(&fake, device, offset, u32::MAX);
        let from_device = read_config_dword(&fake, device, offset);
        write_config_dword(&fake, device, offset, original);
        assert_eq!(
            sizing_readback(&bars, usize::from(slot)),
            from_device,
            "slot {slot}"
        );
    }
}

#[test]
fn command_writes_may_enable_but_never_disable_decoding() {
    let mut settled = SettledBars::new([None; 6]);
    // Decoding on: a write clearing it keeps it, and an unchanged result is dropped.
    assert_eq!(settled.write(COMMAND, 0b100, || 0b111), None);
    assert_eq!(settled.write(COMMAND, 0b000, || 0b111), Some(0b011));
    // Decoding off: turning memory on goes through.
    assert_eq!(settled.write(COMMAND, 0b110, || 0b100), Some(0b110));
    // Interrupt disable is still the driver's to set.
    assert_eq!(settled.write(COMMAND, 0x407, || 0b111), Some(0x407));
    // Other registers pass untouched.
    assert_eq!(settled.write(0x3c, 0x1ff, || 0), Some(0x1ff));
}
