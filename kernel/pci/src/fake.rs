//! A simulated configuration space for host tests (this crate's, and drivers' with the `fake`
//! feature).
//!
//! Each function is 4 KiB of dwords with a per-dword mask of writable bits, so registers behave
//! like hardware: read-only fields ignore writes, BARs read back their size mask after an
//! all-ones write, status error bits are write-one-to-clear. Absent functions read all-ones.
//!
//! ```
//! use tether_pci::fake::{FakeConfigSpace, FakeFunction};
//! use tether_pci::PciAddress;
//! let space = FakeConfigSpace::new();
//! space.insert(
//!     PciAddress::new(0, 0, 4, 0),
//!     FakeFunction::endpoint(0x1b36, 0x000d, 0x0c, 0x03, 0x30)
//!         .mem64_bar(0, 0xfebf_0000, 0x4000, false)
//!         .msix(16, 0, 0x3000, 0, 0x3800),
//! );
//! assert_eq!(tether_pci::enumerate(&space).len(), 1);
//! ```

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use pci_types::{ConfigRegionAccess, PciAddress};

const DWORDS: usize = 1024;

/// Index of the dword holding byte `offset`.
const fn dword(offset: u16) -> usize {
    offset as usize / 4
}

const COMMAND_STATUS: usize = dword(0x04);
const CLASS_REVISION: usize = dword(0x08);
const HEADER_TYPE: usize = dword(0x0c);
const BAR0: usize = dword(0x10);
const BRIDGE_BUSES: usize = dword(0x18);
const SUBSYSTEM: usize = dword(0x2c);
const CAPABILITY_POINTER: usize = dword(0x34);
const INTERRUPT: usize = dword(0x3c);
const FIRST_CAPABILITY: u16 = 0x40;

/// Command bits software may set (I/O, memory, bus master, ..., INTx disable).
const COMMAND_WRITABLE: u32 = 0x07ff;
/// Status bits that are write-one-to-clear (parity, SERR, aborts), in the dword's high half.
const STATUS_RW1C: u32 = 0xf900_0000;
const STATUS_CAPABILITY_LIST: u32 = 1 << 20;
const COMMAND_IO: u32 = 1;
const COMMAND_MEMORY: u32 = 1 << 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BarDecode {
    None,
    Memory,
    Io,
}

/// One simulated function, built with the chained constructors below.
#[derive(Clone, Debug)]
pub struct FakeFunction {
    registers: Vec<u32>,
    writable: Vec<u32>,
    write_one_to_clear: Vec<u32>,
    bar_slots: usize,
    bar_decode: [BarDecode; 6],
    last_capability: Option<u16>,
    next_capability: u16,
}

impl FakeFunction {
    fn blank(
        vendor: u16,
        device: u16,
        class: u8,
        subclass: u8,
        prog_if: u8,
        header_type: u8,
    ) -> Self {
        let mut f = FakeFunction {
            registers: vec![0; DWORDS],
            writable: vec![0; DWORDS],
            write_one_to_clear: vec![0; DWORDS],
            bar_slots: if header_type == 1 { 2 } else { 6 },
            bar_decode: [BarDecode::None; 6],
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
        };
        f.registers[0] = u32::from(device) << 16 | u32::from(vendor);
        f.registers[CLASS_REVISION] =
            u32::from(class) << 24 | u32::from(subclass) << 16 | u32::from(prog_if) << 8;
        f.registers[HEADER_TYPE] = u32::from(header_type) << 16;
        f.writable[COMMAND_STATUS] = COMMAND_WRITABLE;
        f.write_one_to_clear[COMMAND_STATUS] = STATUS_RW1C;
        // Cache line size and latency timer.
        f.writable[HEADER_TYPE] = 0xffff;
        // Interrupt line.
        f.writable[INTERRUPT] = 0xff;
        f
    }

    /// A type 0 function.
    pub fn endpoint(vendor: u16, device: u16, class: u8, subclass: u8, prog_if: u8) -> Self {
        Self::blank(vendor, device, class, subclass, prog_if, 0)
    }

    /// A PCI-PCI bridge (class 0604, type 1 header) already configured by firmware; the primary
    /// bus number is filled in by [`FakeConfigSpace::insert`].
    pub fn pci_bridge(vendor: u16, device: u16, secondary_bus: u8, subordinate_bus: u8) -> Self {
        let mut f = Self::blank(vendor, device, 0x06, 0x04, 0x00, 1);
        f.registers[BRIDGE_BUSES] =
            u32::from(subordinate_bus) << 16 | u32::from(secondary_bus) << 8;
        f.writable[BRIDGE_BUSES] = 0x00ff_ffff;
        f
    }

    /// Sets the multi-function bit (function 0 of a multi-function device).
    pub fn multi_function(mut self) -> Self {
        self.registers[HEADER_TYPE] |= 1 << 23;
        self
    }

    pub fn revision(mut self, revision: u8) -> Self {
        self.registers[CLASS_REVISION] =
            (self.registers[CLASS_REVISION] & !0xff) | u32::from(revision);
        self
    }

    pub fn subsystem(mut self, vendor: u16, id: u16) -> Self {
        self.registers[SUBSYSTEM] = u32::from(id) << 16 | u32::from(vendor);
        self
    }

    /// Interrupt pin (1..=4 for INTA..INTD, read-only) and line (writable).
    pub fn interrupt(mut self, pin: u8, line: u8) -> Self {
        self.registers[INTERRUPT] =
            (self.registers[INTERRUPT] & !0xffff) | u32::from(pin) << 8 | u32::from(line);
        self
    }

    /// The command register as firmware left it (e.g. memory decode on).
    pub fn command(mut self, command: u16) -> Self {
        self.registers[COMMAND_STATUS] =
            (self.registers[COMMAND_STATUS] & !0xffff) | u32::from(command);
        self
    }

    /// Latches status bits (e.g. a received master abort) to check they survive.
    pub fn status(mut self, status: u16) -> Self {
        self.registers[COMMAND_STATUS] =
            (self.registers[COMMAND_STATUS] & 0xffff) | u32::from(status) << 16;
        self
    }

    fn check_bar(&self, slot: usize, size: u64, minimum: u64) {
        assert!(slot < self.bar_slots, "BAR slot {slot} beyond this header");
        assert!(
            size.is_power_of_two() && size >= minimum,
            "BAR size {size:#x} invalid"
        );
    }

    pub fn mem32_bar(mut self, slot: usize, base: u32, size: u32, prefetchable: bool) -> Self {
        self.check_bar(slot, u64::from(size), 16);
        assert_eq!(base % size, 0, "BAR base must be size-aligned");
        let flags = if prefetchable { 1 << 3 } else { 0 };
        self.registers[BAR0 + slot] = base | flags;
        self.writable[BAR0 + slot] = !(size - 1) & !0xf;
        self.bar_decode[slot] = BarDecode::Memory;
        self
    }

    pub fn mem64_bar(mut self, slot: usize, base: u64, size: u64, prefetchable: bool) -> Self {
        self.check_bar(slot, size, 16);
        assert!(slot + 1 < self.bar_slots, "64-bit BAR needs two slots");
        assert_eq!(base % size, 0, "BAR base must be size-aligned");
        let flags = 0b100 | if prefetchable { 1 << 3 } else { 0 };
        let mask = !(size - 1);
        self.registers[BAR0 + slot] = base as u32 | flags;
        self.registers[BAR0 + slot + 1] = (base >> 32) as u32;
        self.writable[BAR0 + slot] = mask as u32 & !0xf;
        self.writable[BAR0 + slot + 1] = (mask >> 32) as u32;
        self.bar_decode[slot] = BarDecode::Memory;
        self.bar_decode[slot + 1] = BarDecode::Memory;
        self
    }

    pub fn io_bar(mut self, slot: usize, port: u32, size: u32) -> Self {
        self.check_bar(slot, u64::from(size), 4);
        assert_eq!(port % size, 0, "BAR base must be size-aligned");
        self.registers[BAR0 + slot] = port | 1;
        self.writable[BAR0 + slot] = !(size - 1) & !0x3;
        self.bar_decode[slot] = BarDecode::Io;
        self
    }

    /// Appends a capability: `id`, the 16-bit field after the next pointer, then `body` dwords.
    /// Returns the builder; the capability lands at the next free dword from 0x40.
    pub fn capability(self, id: u8, control: u16, body: &[u32]) -> Self {
        self.capability_with_writable(id, control, 0, body, &[])
    }

    fn capability_with_writable(
        mut self,
        id: u8,
        control: u16,
        control_writable: u16,
        body: &[u32],
        body_writable: &[u32],
    ) -> Self {
        let offset = self.next_capability;
        let index = usize::from(offset) / 4;
        assert!(
            usize::from(offset) + 4 * (1 + body.len()) <= 0x100,
            "capabilities overflow 256 bytes"
        );
        self.registers[index] = u32::from(control) << 16 | u32::from(id);
        self.writable[index] = u32::from(control_writable) << 16;
        for (i, value) in body.iter().enumerate() {
            self.registers[index + 1 + i] = *value;
            self.writable[index + 1 + i] = body_writable.get(i).copied().unwrap_or(0);
        }
        match self.last_capability {
            Some(last) => self.registers[usize::from(last) / 4] |= u32::from(offset) << 8,
            None => {
                // Type 0 and type 1 headers both keep the pointer at 0x34.
                self.registers[CAPABILITY_POINTER] = u32::from(offset);
                self.registers[COMMAND_STATUS] |= STATUS_CAPABILITY_LIST;
            }
        }
        self.last_capability = Some(offset);
        self.next_capability = offset + 4 * (1 + body.len() as u16);
        self
    }

    /// An MSI capability with the given layout; the function can send 2^`capable_log2` vectors.
    pub fn msi(self, is_64bit: bool, per_vector_masking: bool, capable_log2: u8) -> Self {
        assert!(capable_log2 <= 5);
        let control = u16::from(capable_log2) << 1
            | if is_64bit { 1 << 7 } else { 0 }
            | if per_vector_masking { 1 << 8 } else { 0 };
        // Enable and Multiple Message Enable are writable.
        let control_writable = 1 | 0b111 << 4;
        let mut body: Vec<u32> = vec![0];
        let mut body_writable: Vec<u32> = vec![!0x3];
        if is_64bit {
            body.push(0);
            body_writable.push(u32::MAX);
        }
        body.push(0);
        body_writable.push(0xffff);
        if per_vector_masking {
            body.extend([0, 0]);
            body_writable.extend([u32::MAX, 0]);
        }
        self.capability_with_writable(0x05, control, control_writable, &body, &body_writable)
    }

    /// An MSI-X capability: `table_size` entries in BAR `table_bar` at `table_offset`, PBA in
    /// `pba_bar` at `pba_offset` (offsets 8-byte aligned).
    pub fn msix(
        self,
        table_size: u16,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> Self {
        assert!((1..=2048).contains(&table_size));
        assert!(table_offset.is_multiple_of(8) && pba_offset.is_multiple_of(8));
        let control = table_size - 1;
        // Function Mask and Enable are writable.
        let control_writable = 0b11 << 14;
        let body = [
            table_offset | u32::from(table_bar),
            pba_offset | u32::from(pba_bar),
        ];
        self.capability_with_writable(0x11, control, control_writable, &body, &[])
    }

    /// Overwrites a raw dword and its writable mask, for layouts the builders cannot make
    /// (loops, hostile pointers, reserved encodings).
    pub fn raw(mut self, offset: u16, value: u32, writable: u32) -> Self {
        let index = usize::from(offset) / 4;
        self.registers[index] = value;
        self.writable[index] = writable;
        self
    }

    fn write(&mut self, index: usize, value: u32) {
        let writable = self.writable[index];
        let cleared = value & self.write_one_to_clear[index];
        self.registers[index] = (self.registers[index] & !writable & !cleared) | (value & writable);
    }

    fn decoding_bar(&self, index: usize) -> bool {
        let command = self.registers[COMMAND_STATUS];
        let Some(slot) = index
            .checked_sub(BAR0)
            .filter(|&slot| slot < self.bar_slots)
        else {
            return false;
        };
        match self.bar_decode[slot] {
            BarDecode::Memory => command & COMMAND_MEMORY != 0,
            BarDecode::Io => command & COMMAND_IO != 0,
            BarDecode::None => false,
        }
    }
}

/// The simulated configuration space of one segment (segment numbers are ignored).
///
/// Interior mutability (RefCell) because `ConfigRegionAccess::write` takes `&self`; not `Sync`,
/// which host tests do not need.
#[derive(Default)]
pub struct FakeConfigSpace {
    functions: RefCell<BTreeMap<(u8, u8, u8), FakeFunction>>,
    reads: Cell<u64>,
    writes: Cell<u64>,
    bar_writes_while_decoding: Cell<u64>,
}

fn key(address: PciAddress) -> (u8, u8, u8) {
    (address.bus(), address.device(), address.function())
}

fn index(offset: u16) -> usize {
    assert!(
        offset.is_multiple_of(4) && offset < 0x1000,
        "config access at invalid offset {offset:#x}"
    );
    usize::from(offset) / 4
}

impl FakeConfigSpace {
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `function` at `address` (replacing anything there). Bridges get their primary
    /// bus number from the address.
    pub fn insert(&self, address: PciAddress, mut function: FakeFunction) {
        if function.bar_slots == 2 {
            function.registers[BRIDGE_BUSES] =
                (function.registers[BRIDGE_BUSES] & !0xff) | u32::from(address.bus());
        }
        self.functions.borrow_mut().insert(key(address), function);
    }

    /// Reads a dword without counting it (for test assertions).
    pub fn peek(&self, address: PciAddress, offset: u16) -> u32 {
        self.functions
            .borrow()
            .get(&key(address))
            .map_or(u32::MAX, |f| f.registers[index(offset)])
    }

    /// Sets a dword directly, ignoring the writable mask (e.g. to simulate the device).
    pub fn poke(&self, address: PciAddress, offset: u16, value: u32) {
        if let Some(f) = self.functions.borrow_mut().get_mut(&key(address)) {
            f.registers[index(offset)] = value;
        }
    }

    /// The command register of `address`.
    pub fn command(&self, address: PciAddress) -> u16 {
        self.peek(address, 0x04) as u16
    }

    /// Configuration reads so far (bounds tests check the walk stays finite and small).
    pub fn reads(&self) -> u64 {
        self.reads.get()
    }

    pub fn writes(&self) -> u64 {
        self.writes.get()
    }

    /// Writes to an implemented BAR while its decode (memory or I/O) was enabled: sizing must
    /// keep this at zero.
    pub fn bar_writes_while_decoding(&self) -> u64 {
        self.bar_writes_while_decoding.get()
    }
}

// Implementing pci_types' trait means declaring its `unsafe fn`s; the bodies are safe code.
#[allow(unsafe_code)]
impl ConfigRegionAccess for FakeConfigSpace {
    unsafe fn read(&self, address: PciAddress, offset: u16) -> u32 {
        self.reads.set(self.reads.get() + 1);
        self.peek(address, offset)
    }

    unsafe fn write(&self, address: PciAddress, offset: u16, value: u32) {
        self.writes.set(self.writes.get() + 1);
        let i = index(offset);
        if let Some(f) = self.functions.borrow_mut().get_mut(&key(address)) {
            if f.decoding_bar(i) {
                self.bar_writes_while_decoding
                    .set(self.bar_writes_while_decoding.get() + 1);
            }
            f.write(i, value);
        }
    }
}
