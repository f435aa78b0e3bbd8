//! The command register.
//!
//! Reads use pci_types' `PciHeader::command`. Writes are done here because pci_types'
//! `update_command` writes back the whole dword including the status register, whose error bits
//! are write-one-to-clear: it would silently clear latched errors. We write the command half
//! with zeros in the status half, which leaves status untouched.

use crate::access::write_config_dword;
use pci_types::{CommandRegister, ConfigRegionAccess, PciAddress, PciHeader};

/// Offset of the command (low half) / status (high half) dword, common to all header types.
const COMMAND_STATUS: u16 = 0x04;

/// Reads the command register.
pub fn read_command(
    access: &(impl ConfigRegionAccess + ?Sized),
    address: PciAddress,
) -> CommandRegister {
    PciHeader::new(address).command(access)
}

pub(crate) fn write_command(
    access: &(impl ConfigRegionAccess + ?Sized),
    address: PciAddress,
    command: CommandRegister,
) {
    write_config_dword(access, address, COMMAND_STATUS, u32::from(command.bits()));
}

pub(crate) fn update_command(
    access: &(impl ConfigRegionAccess + ?Sized),
    address: PciAddress,
    f: impl FnOnce(CommandRegister) -> CommandRegister,
) {
    let old = read_command(access, address);
    let new = f(old);
    if new != old {
        write_command(access, address, new);
    }
}

/// Lets the function decode its memory BARs and master DMA (what a driver wants before touching
/// an MMIO device such as xHCI or virtio-net).
pub fn enable_bus_master_and_memory(
    access: &(impl ConfigRegionAccess + ?Sized),
    address: PciAddress,
) {
    update_command(access, address, |c| {
        c | CommandRegister::MEMORY_ENABLE | CommandRegister::BUS_MASTER_ENABLE
    });
}

/// Enables memory decoding (a no-op when it is on already).
pub fn enable_memory_decoding(access: &(impl ConfigRegionAccess + ?Sized), address: PciAddress) {
    update_command(access, address, |c| c | CommandRegister::MEMORY_ENABLE);
}

/// Lets the function assert its legacy INTx pin (clears Interrupt Disable) and enables memory
/// decoding and bus mastering: the driver interrupts by INTx when it has neither MSI nor MSI-X.
pub fn enable_intx(access: &(impl ConfigRegionAccess + ?Sized), address: PciAddress) {
    update_command(access, address, |c| {
        (c | CommandRegister::MEMORY_ENABLE | CommandRegister::BUS_MASTER_ENABLE)
            & !CommandRegister::INTERRUPT_DISABLE
    });
}

/// Stops the function asserting its legacy INTx pin; done whenever MSI or MSI-X is enabled so
/// the device cannot raise a shared level interrupt nobody acknowledges.
pub fn disable_intx(access: &(impl ConfigRegionAccess + ?Sized), address: PciAddress) {
    update_command(access, address, |c| c | CommandRegister::INTERRUPT_DISABLE);
}
