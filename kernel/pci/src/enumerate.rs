//! Bus enumeration.

use crate::access::read_config_dword;
use crate::bar::read_bars;
use crate::capability::{capability_id, walk_capabilities};
use crate::function::PciFunction;
use crate::msi::{decode_msi, decode_msix};
use alloc::vec::Vec;
use pci_types::{
    ConfigRegionAccess, EndpointHeader, HeaderType, PciAddress, PciHeader, PciPciBridgeHeader,
};

const DEVICES_PER_BUS: u8 = 32;
const FUNCTIONS_PER_DEVICE: u8 = 8;
const BUSES_PER_SEGMENT: usize = 256;

// pci_types' PciPciBridgeHeader has no accessors for these two; they sit at the same place in
// type 1 headers as in type 0, and CardBus (type 2) keeps its capability pointer at 0x14.
const CAPABILITY_POINTER: u16 = 0x34;
const CARDBUS_CAPABILITY_POINTER: u16 = 0x14;
const INTERRUPT_LINE_PIN: u16 = 0x3c;

/// Enumerates segment 0; see [`enumerate_segment`].
pub fn enumerate(access: &(impl ConfigRegionAccess + ?Sized)) -> Vec<PciFunction> {
    enumerate_segment(access, 0)
}

/// Finds every function reachable from bus 0 of `segment`, sorted by address.
///
/// Follows PCI-PCI bridges to their (firmware-assigned) secondary buses; bridges left
/// unconfigured (secondary bus 0) are not renumbered. If 00:00.0 is multi-function, function N
/// is the host bridge of bus N, so each such bus is a root too.
///
/// Terminates on any configuration space: each bus is scanned at most once, so bridges that
/// point back at bus 0 or at each other cost nothing, and the whole walk reads at most
/// 256 buses x 32 devices x 8 functions. A work list instead of recursion keeps the kernel stack
/// flat however deep the bridges nest.
pub fn enumerate_segment(
    access: &(impl ConfigRegionAccess + ?Sized),
    segment: u16,
) -> Vec<PciFunction> {
    let mut found = Vec::new();
    let mut scanned = [false; BUSES_PER_SEGMENT];
    let mut pending: Vec<u8> = Vec::from([0]);

    let host = PciAddress::new(segment, 0, 0, 0);
    if is_present(access, host) && PciHeader::new(host).has_multiple_functions(access) {
        for function in 1..FUNCTIONS_PER_DEVICE {
            if is_present(access, PciAddress::new(segment, 0, 0, function)) {
                pending.push(function);
            }
        }
    }

    while let Some(bus) = pending.pop() {
        if core::mem::replace(&mut scanned[usize::from(bus)], true) {
            continue;
        }
        scan_bus(access, segment, bus, &mut found, &mut pending);
    }
    found.sort_by_key(|f: &PciFunction| f.address);
    found
}

/// A read of an absent function's vendor ID returns 0xFFFF; 0x0000 is not a valid vendor either.
fn is_present(access: &(impl ConfigRegionAccess + ?Sized), address: PciAddress) -> bool {
    let (vendor, _) = PciHeader::new(address).id(access);
    vendor != 0xffff && vendor != 0x0000
}

fn scan_bus(
    access: &(impl ConfigRegionAccess + ?Sized),
    segment: u16,
    bus: u8,
    found: &mut Vec<PciFunction>,
    pending: &mut Vec<u8>,
) {
    for device in 0..DEVICES_PER_BUS {
        let first = PciAddress::new(segment, bus, device, 0);
        if !is_present(access, first) {
            continue;
        }
        let function = probe_function(access, first);
        // Only function 0's bit counts; other functions are probed only if it is set.
        let functions = if function.multi_function {
            FUNCTIONS_PER_DEVICE
        } else {
            1
        };
        record(function, found, pending);
        for number in 1..functions {
            let address = PciAddress::new(segment, bus, device, number);
            if is_present(access, address) {
                record(probe_function(access, address), found, pending);
            }
        }
    }
}

fn record(function: PciFunction, found: &mut Vec<PciFunction>, pending: &mut Vec<u8>) {
    if let Some(secondary) = function.secondary_bus {
        pending.push(secondary);
    }
    found.push(function);
}

/// Reads everything [`PciFunction`] holds for a function known to be present.
fn probe_function(access: &(impl ConfigRegionAccess + ?Sized), address: PciAddress) -> PciFunction {
    let header = PciHeader::new(address);
    let (vendor_id, device_id) = header.id(access);
    let (revision, class, subclass, prog_if) = header.revision_and_class(access);
    let header_type = header.header_type(access);
    let multi_function = header.has_multiple_functions(access);
    let has_capabilities = header.status(access).has_capability_list();
    let is_host_bridge = class == 0x06 && subclass == 0x00;

    let mut function = PciFunction {
        address,
        vendor_id,
        device_id,
        class,
        subclass,
        prog_if,
        revision,
        header_type,
        multi_function,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
        bars: [None; 6],
        interrupt_pin: 0,
        interrupt_line: 0,
        capabilities: Vec::new(),
        msi: None,
        msix: None,
        secondary_bus: None,
    };

    let mut capability_pointer = 0u8;
    match header_type {
        HeaderType::Endpoint => {
            let endpoint = EndpointHeader::from_header(header, access);
            if let Some(endpoint) = endpoint {
                (function.interrupt_pin, function.interrupt_line) = endpoint.interrupt(access);
                (function.subsystem_id, function.subsystem_vendor_id) = endpoint.subsystem(access);
                // pci_types already checks the status bit; its pointer is the low byte.
                capability_pointer = endpoint.capability_pointer(access) as u8;
            }
            function.bars = read_bars(access, address, 6, is_host_bridge);
        }
        HeaderType::PciPciBridge => {
            if let Some(bridge) = PciPciBridgeHeader::from_header(PciHeader::new(address), access) {
                let secondary = bridge.secondary_bus_number(access);
                // 0 means firmware never configured the bridge: nothing reachable behind it.
                function.secondary_bus = (secondary != 0).then_some(secondary);
            }
            read_interrupt(access, &mut function);
            if has_capabilities {
                capability_pointer = read_config_dword(access, address, CAPABILITY_POINTER) as u8;
            }
            function.bars = read_bars(access, address, 2, is_host_bridge);
        }
        HeaderType::CardBusBridge => {
            read_interrupt(access, &mut function);
            if has_capabilities {
                capability_pointer =
                    read_config_dword(access, address, CARDBUS_CAPABILITY_POINTER) as u8;
            }
        }
        // Unknown layout: identity only; touching BARs or pointers could write anywhere.
        _ => {}
    }

    function.capabilities = walk_capabilities(access, address, capability_pointer);
    if let Some(cap) = function.find_capability(capability_id::MSI) {
        function.msi = decode_msi(access, &function, cap.offset);
    }
    if let Some(cap) = function.find_capability(capability_id::MSIX) {
        function.msix = decode_msix(access, &function, cap.offset);
    }
    function
}

fn read_interrupt(access: &(impl ConfigRegionAccess + ?Sized), function: &mut PciFunction) {
    let value = read_config_dword(access, function.address, INTERRUPT_LINE_PIN);
    function.interrupt_line = value as u8;
    function.interrupt_pin = (value >> 8) as u8;
}
