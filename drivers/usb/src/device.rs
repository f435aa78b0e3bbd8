//! The device model shown in the boot log and on the console: one line per device with
//! controller, port path, speed, VID:PID, class and bound driver.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use crate::descriptor::class;
use crate::enumerate::UsbDevice;
use crate::host::Attachment;
use crate::speed::Speed;

/// One row of the device table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSummary {
    /// Controller name, e.g. "xhci0" or a PCI address.
    pub controller: String,
    /// "1-5" for root port 5 of bus 1, "1-5.2" for port 2 of a hub on it (Linux style).
    pub port_path: String,
    pub speed: Speed,
    pub vid: u16,
    pub pid: u16,
    /// Device class, or when that is 0 (per interface) the first interface's class.
    pub class: u8,
    pub subclass: u8,
    pub protocol: u8,
    pub bound_driver: Option<&'static str>,
}

impl DeviceSummary {
    /// `bus` is the controller's bus number in port paths (1 for the first controller).
    pub fn new(
        controller: &str,
        bus: u8,
        dev: &UsbDevice,
        bound_driver: Option<&'static str>,
    ) -> Self {
        let d = &dev.descriptor;
        let (class, subclass, protocol) = if d.class == class::PER_INTERFACE {
            first_interface_class(dev).unwrap_or((0, 0, 0))
        } else {
            (d.class, d.subclass, d.protocol)
        };
        DeviceSummary {
            controller: controller.into(),
            port_path: port_path(bus, &dev.attachment),
            speed: dev.attachment.speed,
            vid: d.vendor,
            pid: d.product,
            class,
            subclass,
            protocol,
            bound_driver,
        }
    }

    /// Short class name, refined by subclass/protocol where that names the function.
    pub fn class_name(&self) -> &'static str {
        function_name(self.class, self.subclass, self.protocol)
    }
}

/// Class triple of the first interface (alt setting 0 where present) of the first
/// configuration in descriptor order.
fn first_interface_class(dev: &UsbDevice) -> Option<(u8, u8, u8)> {
    let cfg = dev.configurations.first()?;
    let iface = cfg.interfaces.first()?;
    let alt = iface.alt(0).or(iface.alternates.first())?;
    Some((alt.class, alt.subclass, alt.protocol))
}

/// Linux-style port path: bus, root port, then one ".port" per hub tier from the route
/// string (4 bits per tier, ending at the first zero nibble).
pub fn port_path(bus: u8, at: &Attachment) -> String {
    let mut s = format!("{bus}-{}", at.root_port);
    let mut route = at.route;
    while route & 0xF != 0 {
        let _ = write!(s, ".{}", route & 0xF);
        route >>= 4;
    }
    s
}

/// Short name of a USB class code.
pub fn class_name(class: u8) -> &'static str {
    match class {
        0x00 => "Per-interface",
        0x01 => "Audio",
        0x02 => "CDC",
        0x03 => "HID",
        0x05 => "Physical",
        0x06 => "Image",
        0x07 => "Printer",
        0x08 => "Mass Storage",
        0x09 => "Hub",
        0x0A => "CDC Data",
        0x0B => "Smart Card",
        0x0D => "Content Security",
        0x0E => "Video",
        0x0F => "Healthcare",
        0x10 => "Audio/Video",
        0x11 => "Billboard",
        0x12 => "USB-C Bridge",
        0xDC => "Diagnostic",
        0xE0 => "Wireless",
        0xEF => "Misc",
        0xFE => "App Specific",
        0xFF => "Vendor",
        _ => "Unknown",
    }
}

/// Class name refined for the functions the table should tell apart.
pub fn function_name(class: u8, subclass: u8, protocol: u8) -> &'static str {
    match (class, subclass, protocol) {
        (0xE0, 0x01, 0x03) => "Wireless (RNDIS)",
        (0xEF, 0x04, 0x01) => "Misc (RNDIS)",
        (0x02, 0x02, 0xFF) => "CDC (RNDIS)",
        (0x02, 0x06, _) => "CDC (ECM)",
        (0x02, 0x0D, _) => "CDC (NCM)",
        (0x02, 0x02, _) => "CDC (ACM)",
        (0x03, 0x01, 0x01) => "HID (keyboard)",
        (0x03, 0x01, 0x02) => "HID (mouse)",
        (0x08, 0x06, 0x50) => "Mass Storage (BOT)",
        (0x08, 0x06, 0x62) => "Mass Storage (UAS)",
        _ => class_name(class),
    }
}

const HEADER: [&str; 6] = ["CONTROLLER", "PORT", "SPEED", "VID:PID", "CLASS", "DRIVER"];

/// The table: one header line, one line per device, columns padded to the widest cell.
/// Every line ends with '\n'.
pub fn format_table(devices: &[DeviceSummary]) -> String {
    let rows: Vec<[String; 6]> = devices
        .iter()
        .map(|d| {
            [
                d.controller.clone(),
                d.port_path.clone(),
                String::from(d.speed.name()),
                format!("{:04x}:{:04x}", d.vid, d.pid),
                format!("{:02x} {}", d.class, d.class_name()),
                String::from(d.bound_driver.unwrap_or("no driver")),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, c) in cells.enumerate() {
            if i + 1 < widths.len() {
                let _ = write!(l, "{c:<w$}  ", w = widths[i]);
            } else {
                l.push_str(c);
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut HEADER.iter().copied());
    for r in &rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}
