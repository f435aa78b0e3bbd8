//! A fake host controller for host tests of enumeration, hubs and class drivers.
//!
//! [`FakeHostController`] holds fake devices on root ports (and behind fake hubs), answers
//! control transfers from their descriptor blobs, records every request, can be told to fail
//! chosen requests, and counts live device handles so tests can check that nothing leaks
//! after a failure. It models the parts of a real controller that enumeration depends on:
//! EP0 starts at the speed's default max packet size and a device whose real
//! bMaxPacketSize0 is larger babbles on reads longer than that until
//! [`HostController::set_ep0_max_packet`] fixes it; a device behind a hub port answers only
//! after that port has been powered and reset; hub class requests need a configured hub.

use alloc::format;
use alloc::vec::Vec;

use crate::descriptor::dt;
use crate::host::{Attachment, DeviceHandle, HostController, PortStatus, TransferError};
use crate::request::{port_change, port_status, rt, std_req, PortFeature, SetupPacket};
use crate::speed::Speed;

/// Descriptor blobs of QEMU's emulated devices and small builders, shared by tests here and in
/// other crates (with the `fake` feature).
pub mod blobs {
    use alloc::vec;
    use alloc::vec::Vec;

    /// Wraps a configuration body with a 9-byte header carrying the right wTotalLength.
    pub fn config(value: u8, num_interfaces: u8, body: &[u8]) -> Vec<u8> {
        let total = (9 + body.len()) as u16;
        let mut v = vec![
            9,
            2,
            total as u8,
            (total >> 8) as u8,
            num_interfaces,
            value,
            0,
            0xC0,
            50,
        ];
        v.extend_from_slice(body);
        v
    }

    pub fn iface(number: u8, alt: u8, eps: u8, class: u8, sub: u8, proto: u8) -> [u8; 9] {
        [9, 4, number, alt, eps, class, sub, proto, 0]
    }

    pub fn ep(address: u8, attributes: u8, max_packet: u16, interval: u8) -> [u8; 7] {
        [
            7,
            5,
            address,
            attributes,
            max_packet as u8,
            (max_packet >> 8) as u8,
            interval,
        ]
    }

    /// A device descriptor.
    #[allow(clippy::too_many_arguments)]
    pub fn device(
        usb: u16,
        class: [u8; 3],
        max_packet0: u8,
        vid: u16,
        pid: u16,
        strings: [u8; 3],
        num_configs: u8,
    ) -> [u8; 18] {
        [
            18,
            1,
            usb as u8,
            (usb >> 8) as u8,
            class[0],
            class[1],
            class[2],
            max_packet0,
            vid as u8,
            (vid >> 8) as u8,
            pid as u8,
            (pid >> 8) as u8,
            0x00,
            0x01,
            strings[0],
            strings[1],
            strings[2],
            num_configs,
        ]
    }

    /// QEMU usb-net device descriptor (from FACTS.md).
    pub fn qemu_net_device() -> [u8; 18] {
        device(0x0200, [2, 0, 0], 64, 0x0525, 0xa4a2, [1, 2, 3], 2)
    }

    /// QEMU usb-net CDC-ECM configuration (value 1, descriptor index 1).
    pub fn qemu_ecm_config() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&iface(0, 0, 1, 0x02, 0x06, 0x00));
        b.extend_from_slice(&[5, 0x24, 0x00, 0x10, 0x01]); // header, CDC 1.10
        b.extend_from_slice(&[5, 0x24, 0x06, 0, 1]); // union master 0, slave 1
        b.extend_from_slice(&[13, 0x24, 0x0F, 3, 0, 0, 0, 0, 0xEA, 0x05, 0, 0, 0]); // ethernet
        b.extend_from_slice(&ep(0x81, 0x03, 16, 32));
        b.extend_from_slice(&iface(1, 0, 0, 0x0A, 0, 0));
        b.extend_from_slice(&iface(1, 1, 2, 0x0A, 0, 0));
        b.extend_from_slice(&ep(0x82, 0x02, 64, 0));
        b.extend_from_slice(&ep(0x02, 0x02, 64, 0));
        config(1, 2, &b)
    }

    /// QEMU usb-net RNDIS configuration (value 2, descriptor index 0).
    pub fn qemu_rndis_config() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&iface(0, 0, 1, 0x02, 0x02, 0xFF));
        b.extend_from_slice(&[5, 0x24, 0x00, 0x10, 0x01]); // header
        b.extend_from_slice(&[5, 0x24, 0x01, 0x00, 0x01]); // call management
        b.extend_from_slice(&[4, 0x24, 0x02, 0x00]); // ACM
        b.extend_from_slice(&[5, 0x24, 0x06, 0, 1]); // union
        b.extend_from_slice(&ep(0x81, 0x03, 16, 32));
        b.extend_from_slice(&iface(1, 0, 2, 0x0A, 0, 0));
        b.extend_from_slice(&ep(0x82, 0x02, 64, 0));
        b.extend_from_slice(&ep(0x02, 0x02, 64, 0));
        config(2, 2, &b)
    }

    /// QEMU usb-kbd (the USB 1.x full-speed variant: bMaxPacketSize0 8, one boot-keyboard
    /// interface with interrupt IN 0x81, 8 bytes, bInterval 10).
    pub fn qemu_kbd_device() -> [u8; 18] {
        device(0x0100, [0, 0, 0], 8, 0x0627, 0x0001, [1, 4, 5], 1)
    }

    pub fn qemu_kbd_config() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&iface(0, 0, 1, 0x03, 0x01, 0x01));
        b.extend_from_slice(&[9, 0x21, 0x11, 0x01, 0, 1, 0x22, 0x3f, 0]); // HID 1.11
        b.extend_from_slice(&ep(0x81, 0x03, 8, 10));
        config(1, 1, &b)
    }

    /// QEMU usb-storage: class per interface, interface 08/06/50 (SCSI, bulk-only), bulk
    /// IN 0x81 and OUT 0x02 (64 bytes at full speed, 512 at high speed).
    pub fn qemu_storage_device() -> [u8; 18] {
        device(0x0200, [0, 0, 0], 64, 0x46f4, 0x0001, [1, 2, 3], 1)
    }

    pub fn qemu_storage_config(high_speed: bool) -> Vec<u8> {
        let mps = if high_speed { 512 } else { 64 };
        let mut b = Vec::new();
        b.extend_from_slice(&iface(0, 0, 2, 0x08, 0x06, 0x50));
        b.extend_from_slice(&ep(0x81, 0x02, mps, 0));
        b.extend_from_slice(&ep(0x02, 0x02, mps, 0));
        config(1, 1, &b)
    }

    /// A USB 2.0 hub (QEMU's usb-hub is full speed with 8 ports; `high_speed` builds a
    /// single-TT high-speed hub instead).
    pub fn hub_device(high_speed: bool) -> [u8; 18] {
        if high_speed {
            device(0x0200, [9, 0, 1], 64, 0x0409, 0x55aa, [1, 2, 0], 1)
        } else {
            device(0x0110, [9, 0, 0], 8, 0x0409, 0x55aa, [1, 2, 0], 1)
        }
    }

    pub fn hub_config(high_speed: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&iface(0, 0, 1, 0x09, 0, 0));
        b.extend_from_slice(&ep(0x81, 0x03, 2, if high_speed { 12 } else { 255 }));
        config(1, 1, &b)
    }

    /// USB 2.0 hub descriptor: `ports` ports, individual power switching, bPwrOn2PwrGood
    /// `pwr_on_2_good` (units of 2 ms), all ports removable.
    pub fn hub_descriptor(ports: u8, pwr_on_2_good: u8) -> Vec<u8> {
        let bytes = (ports as usize + 1).div_ceil(8);
        let mut v = vec![0, 0x29, ports, 0x01, 0x00, pwr_on_2_good, 0];
        v.extend(core::iter::repeat_n(0x00, bytes)); // DeviceRemovable
        v.extend(core::iter::repeat_n(0xFF, bytes)); // PortPwrCtrlMask
        v[0] = v.len() as u8;
        v
    }

    /// A string descriptor from a &str.
    pub fn string_desc(s: &str) -> Vec<u8> {
        let units: Vec<u16> = s.encode_utf16().collect();
        let mut v = vec![(2 + units.len() * 2) as u8, 3];
        for u in units {
            v.extend_from_slice(&u.to_le_bytes());
        }
        v
    }

    /// String descriptor 0 listing language IDs.
    pub fn languages(ids: &[u16]) -> Vec<u8> {
        let mut v = vec![(2 + ids.len() * 2) as u8, 3];
        for id in ids {
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }
}

/// Makes a request fail. Matches bRequest and, when given, bmRequestType and wValue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailRule {
    pub request_type: Option<u8>,
    pub request: u8,
    pub value: Option<u16>,
    pub error: TransferError,
    /// Fail only the first matching request (after `after`).
    pub once: bool,
    /// Let this many matching requests through before failing.
    pub after: u32,
}

impl FailRule {
    /// Standard GET_DESCRIPTOR of `descriptor_type`/`index` fails with `error`.
    pub fn get_descriptor(descriptor_type: u8, index: u8, error: TransferError) -> Self {
        FailRule {
            request_type: Some(rt::DEVICE_TO_HOST),
            request: std_req::GET_DESCRIPTOR,
            value: Some((descriptor_type as u16) << 8 | index as u16),
            error,
            once: false,
            after: 0,
        }
    }
    /// Every GET_DESCRIPTOR of `descriptor_type` (any index) fails.
    pub fn any_descriptor_of_type(descriptor_type: u8, error: TransferError) -> FailRule {
        // Encoded as value = type << 8 | 0xFF..; matched specially below.
        FailRule {
            request_type: Some(rt::DEVICE_TO_HOST),
            request: std_req::GET_DESCRIPTOR,
            value: Some((descriptor_type as u16) << 8 | ANY_INDEX),
            error,
            once: false,
            after: 0,
        }
    }
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }
    pub fn after(mut self, n: u32) -> Self {
        self.after = n;
        self
    }
    fn matches(&self, s: &SetupPacket) -> bool {
        s.request == self.request
            && self.request_type.is_none_or(|t| t == s.request_type)
            && self.value.is_none_or(|v| {
                if v & 0xFF == ANY_INDEX && self.request == std_req::GET_DESCRIPTOR {
                    v >> 8 == s.value >> 8
                } else {
                    v == s.value
                }
            })
    }
}

/// Marker index for [`FailRule::any_descriptor_of_type`] (string index 0xFF is not used by
/// the fake devices).
const ANY_INDEX: u16 = 0xFF;

/// One fake device.
#[derive(Clone, Debug, Default)]
pub struct FakeDevice {
    pub device_descriptor: Vec<u8>,
    /// Configuration descriptor sets in descriptor-index order.
    pub configurations: Vec<Vec<u8>>,
    /// String descriptors by index (0 = language list); served for any language.
    pub strings: Vec<(u8, Vec<u8>)>,
    /// Other standard descriptors by wValue (type << 8 | index), e.g. a device qualifier.
    /// Any other descriptor type STALLs.
    pub other_descriptors: Vec<(u16, Vec<u8>)>,
    pub failures: Vec<FailRule>,
    /// Address Device fails with this.
    pub address_error: Option<TransferError>,
    /// set_ep0_max_packet fails with this.
    pub ep0_error: Option<TransferError>,
    pub hub: Option<FakeHub>,
}

/// Hub behaviour of a fake device.
#[derive(Clone, Debug, Default)]
pub struct FakeHub {
    pub descriptor: Vec<u8>,
    pub ports: Vec<FakeHubPort>,
}

/// One downstream port of a fake hub.
#[derive(Clone, Debug, Default)]
pub struct FakeHubPort {
    pub device: Option<(Speed, FakeDevice)>,
    pub powered: bool,
    pub enabled: bool,
    /// wPortChange bits pending.
    pub change: u16,
    /// GET_PORT_STATUS calls that still report the reset in progress.
    pub reset_polls: u8,
    pub resetting: bool,
}

impl FakeDevice {
    pub fn new(device_descriptor: &[u8], configurations: Vec<Vec<u8>>) -> Self {
        FakeDevice {
            device_descriptor: device_descriptor.to_vec(),
            configurations,
            ..Default::default()
        }
    }

    pub fn with_strings(mut self, strings: &[(u8, &str)]) -> Self {
        self.strings
            .push((0, blobs::languages(&[crate::descriptor::LANG_EN_US])));
        for (i, s) in strings {
            self.strings.push((*i, blobs::string_desc(s)));
        }
        self
    }

    pub fn failing(mut self, rule: FailRule) -> Self {
        self.failures.push(rule);
        self
    }

    /// QEMU usb-net: two configurations (RNDIS at index 0, ECM at index 1), strings, and a
    /// device-qualifier request that STALLs (no other-speed descriptors).
    pub fn qemu_usb_net() -> Self {
        FakeDevice::new(
            &blobs::qemu_net_device(),
            alloc::vec![blobs::qemu_rndis_config(), blobs::qemu_ecm_config()],
        )
        .with_strings(&[
            (1, "QEMU"),
            (2, "RNDIS/QEMU USB Network Device"),
            (3, "400102030405"),
        ])
    }

    pub fn qemu_usb_kbd() -> Self {
        FakeDevice::new(
            &blobs::qemu_kbd_device(),
            alloc::vec![blobs::qemu_kbd_config()],
        )
        .with_strings(&[(1, "QEMU"), (4, "QEMU USB Keyboard"), (5, "42")])
    }

    pub fn qemu_usb_storage(high_speed: bool) -> Self {
        FakeDevice::new(
            &blobs::qemu_storage_device(),
            alloc::vec![blobs::qemu_storage_config(high_speed)],
        )
        .with_strings(&[
            (1, "QEMU"),
            (2, "QEMU USB HARDDRIVE"),
            (3, "1-0000:00:04.0-1"),
        ])
    }

    /// A hub with `ports` empty ports (attach children with [`FakeDevice::plug`]).
    pub fn hub(high_speed: bool, ports: u8) -> Self {
        let mut d = FakeDevice::new(
            &blobs::hub_device(high_speed),
            alloc::vec![blobs::hub_config(high_speed)],
        )
        .with_strings(&[(1, "QEMU"), (2, "QEMU USB Hub")]);
        d.hub = Some(FakeHub {
            descriptor: blobs::hub_descriptor(ports, 50),
            ports: (0..ports).map(|_| FakeHubPort::default()).collect(),
        });
        d
    }

    /// Connects `child` to hub port `port` (1-based). Panics if this is not a hub.
    pub fn plug(mut self, port: u8, speed: Speed, child: FakeDevice) -> Self {
        let hub = self.hub.as_mut().expect("plug into a non-hub");
        let p = &mut hub.ports[port as usize - 1];
        p.device = Some((speed, child));
        p.change |= port_change::C_CONNECTION;
        self
    }

    /// Disconnects whatever is on hub port `port` (a connect change is reported).
    pub fn unplug(&mut self, port: u8) -> Option<FakeDevice> {
        let p = &mut self.hub.as_mut()?.ports[port as usize - 1];
        p.enabled = false;
        p.change |= port_change::C_CONNECTION;
        p.device.take().map(|d| d.1)
    }

    fn max_packet0(&self) -> u16 {
        match self.device_descriptor.get(7) {
            Some(9) => 512,
            Some(v) => *v as u16,
            None => 8,
        }
    }

    fn config_values(&self) -> impl Iterator<Item = u8> + '_ {
        self.configurations.iter().filter_map(|c| c.get(5).copied())
    }
}

#[derive(Clone, Debug)]
struct Live {
    handle: DeviceHandle,
    /// Root port, then hub ports.
    path: Vec<u8>,
    ep0_max_packet: u16,
    configuration: u8,
}

#[derive(Clone, Debug, Default)]
struct RootPort {
    device: Option<(Speed, FakeDevice)>,
    enabled: bool,
    connect_changed: bool,
}

/// One recorded control request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    pub device: DeviceHandle,
    pub setup: SetupPacket,
    pub result: Result<usize, TransferError>,
}

/// The fake controller.
#[derive(Debug, Default)]
pub struct FakeHostController {
    ports: Vec<RootPort>,
    live: Vec<Live>,
    next_handle: u16,
    /// Every control request, in order.
    pub requests: Vec<Recorded>,
    /// Every set_ep0_max_packet call.
    pub ep0_updates: Vec<(DeviceHandle, u16)>,
    /// Every successful address_device call.
    pub addressed: Vec<(DeviceHandle, Attachment)>,
    /// Every release_device call.
    pub released: Vec<DeviceHandle>,
    /// Every configure_hub call: (device, ports, think time, multi-TT).
    pub hub_configs: Vec<(DeviceHandle, u8, u8, bool)>,
}

impl FakeHostController {
    /// A controller with `ports` empty root ports.
    pub fn new(ports: u8) -> Self {
        FakeHostController {
            ports: (0..ports).map(|_| RootPort::default()).collect(),
            next_handle: 1,
            ..Default::default()
        }
    }

    /// Connects a device to a root port (1-based).
    pub fn plug(&mut self, port: u8, speed: Speed, device: FakeDevice) {
        let p = &mut self.ports[port as usize - 1];
        p.device = Some((speed, device));
        p.enabled = false;
        p.connect_changed = true;
    }

    /// Number of device handles addressed and not yet released.
    pub fn live_handles(&self) -> usize {
        self.live.len()
    }

    /// The fake device a live handle refers to (for tests to inspect hub port state).
    pub fn device(&self, handle: DeviceHandle) -> Option<&FakeDevice> {
        let path = self.live.iter().find(|l| l.handle == handle)?.path.clone();
        self.device_at(&path)
    }

    /// Mutable access to a live device's fake (to plug/unplug behind hubs mid-test).
    pub fn device_mut(&mut self, handle: DeviceHandle) -> Option<&mut FakeDevice> {
        let path = self.live.iter().find(|l| l.handle == handle)?.path.clone();
        self.device_at_mut(&path)
    }

    /// Requests sent to one device.
    pub fn requests_to(&self, handle: DeviceHandle) -> impl Iterator<Item = &Recorded> {
        self.requests.iter().filter(move |r| r.device == handle)
    }

    fn device_at(&self, path: &[u8]) -> Option<&FakeDevice> {
        let (root, rest) = path.split_first()?;
        let mut d = &self.ports.get(*root as usize - 1)?.device.as_ref()?.1;
        for p in rest {
            d = &d
                .hub
                .as_ref()?
                .ports
                .get((*p as usize).checked_sub(1)?)?
                .device
                .as_ref()?
                .1;
        }
        Some(d)
    }

    fn device_at_mut(&mut self, path: &[u8]) -> Option<&mut FakeDevice> {
        let (root, rest) = path.split_first()?;
        let mut d = &mut self.ports.get_mut(*root as usize - 1)?.device.as_mut()?.1;
        for p in rest {
            d = &mut d
                .hub
                .as_mut()?
                .ports
                .get_mut((*p as usize).checked_sub(1)?)?
                .device
                .as_mut()?
                .1;
        }
        Some(d)
    }

    /// Resolves an attachment to a path, checking every port on the way is enabled and the
    /// speed matches.
    fn resolve(&self, at: &Attachment) -> Result<Vec<u8>, TransferError> {
        let root = self
            .ports
            .get((at.root_port as usize).wrapping_sub(1))
            .ok_or(TransferError::Controller(format!(
                "no root port {}",
                at.root_port
            )))?;
        let (mut speed, mut dev) = match &root.device {
            Some((s, d)) if root.enabled => (*s, d),
            _ => return Err(TransferError::Transaction),
        };
        let mut path = alloc::vec![at.root_port];
        let mut route = at.route;
        while route & 0xF != 0 {
            let port = (route & 0xF) as u8;
            route >>= 4;
            let hub = dev.hub.as_ref().ok_or(TransferError::Transaction)?;
            let p = hub
                .ports
                .get(port as usize - 1)
                .ok_or(TransferError::Transaction)?;
            match &p.device {
                Some((s, d)) if p.enabled && p.powered => {
                    speed = *s;
                    dev = d;
                }
                _ => return Err(TransferError::Transaction),
            }
            path.push(port);
        }
        if speed != at.speed {
            return Err(TransferError::Transaction);
        }
        Ok(path)
    }

    fn transfer(
        &mut self,
        handle: DeviceHandle,
        setup: SetupPacket,
        data: &mut [u8],
    ) -> Result<usize, TransferError> {
        let live = self
            .live
            .iter()
            .position(|l| l.handle == handle)
            .ok_or(TransferError::Controller(format!("no device {handle}")))?;
        if data.len() < setup.length as usize {
            return Err(TransferError::Controller(format!(
                "buffer of {} bytes for a {}-byte request",
                data.len(),
                setup.length
            )));
        }
        let path = self.live[live].path.clone();
        let ep0 = self.live[live].ep0_max_packet;
        let configured = self.live[live].configuration;
        let dev = self
            .device_at_mut(&path)
            .ok_or(TransferError::Disconnected)?;
        if let Some(i) = dev.failures.iter().position(|r| r.matches(&setup)) {
            let rule = &mut dev.failures[i];
            if rule.after > 0 {
                rule.after -= 1;
            } else {
                let err = rule.error.clone();
                if rule.once {
                    dev.failures.remove(i);
                }
                return Err(err);
            }
        }
        let real_mps = dev.max_packet0();
        let answer = |blob: &[u8], data: &mut [u8]| -> Result<usize, TransferError> {
            let n = blob.len().min(setup.length as usize);
            if n > ep0 as usize && real_mps > ep0 {
                // The device's first packet is longer than the controller expects.
                return Err(TransferError::Babble);
            }
            data[..n].copy_from_slice(&blob[..n]);
            Ok(n)
        };
        let ty = (setup.value >> 8) as u8;
        let index = setup.value as u8;
        match (setup.request_type, setup.request) {
            (0x80, std_req::GET_DESCRIPTOR) => {
                let blob = match ty {
                    dt::DEVICE => Some(&dev.device_descriptor),
                    dt::CONFIGURATION => dev.configurations.get(index as usize),
                    dt::STRING => dev.strings.iter().find(|s| s.0 == index).map(|s| &s.1),
                    _ => dev
                        .other_descriptors
                        .iter()
                        .find(|s| s.0 == setup.value)
                        .map(|s| &s.1),
                };
                match blob {
                    Some(b) => answer(b, data),
                    None => Err(TransferError::Stall),
                }
            }
            (0x80, std_req::GET_STATUS) => answer(&[0, 0], data),
            (0x80, std_req::GET_CONFIGURATION) => answer(&[configured], data),
            (0x00, std_req::SET_CONFIGURATION) => {
                let v = setup.value as u8;
                if v != 0 && !dev.config_values().any(|c| c == v) {
                    return Err(TransferError::Stall);
                }
                self.live[live].configuration = v;
                Ok(0)
            }
            (0x00, std_req::SET_ADDRESS) => Err(TransferError::Controller(
                "SET_ADDRESS goes through address_device".into(),
            )),
            (0xA0, std_req::GET_DESCRIPTOR) if ty == dt::HUB => match &dev.hub {
                Some(h) => {
                    let d = h.descriptor.clone();
                    answer(&d, data)
                }
                None => Err(TransferError::Stall),
            },
            (0x23 | 0xA3, _) => {
                if configured == 0 {
                    return Err(TransferError::Stall);
                }
                let Some(hub) = dev.hub.as_mut() else {
                    return Err(TransferError::Stall);
                };
                let Some(p) = (setup.index as usize)
                    .checked_sub(1)
                    .and_then(|i| hub.ports.get_mut(i))
                else {
                    return Err(TransferError::Stall);
                };
                hub_port_request(p, setup, data)
            }
            (0xA0, std_req::GET_STATUS) if dev.hub.is_some() => answer(&[1, 0, 0, 0], data),
            _ => Err(TransferError::Stall),
        }
    }
}

fn hub_port_request(
    p: &mut FakeHubPort,
    setup: SetupPacket,
    data: &mut [u8],
) -> Result<usize, TransferError> {
    const POWER: u16 = PortFeature::Power as u16;
    const RESET: u16 = PortFeature::Reset as u16;
    const ENABLE: u16 = PortFeature::Enable as u16;
    let connected = p.powered && p.device.is_some();
    match (setup.request_type, setup.request, setup.value) {
        (0xA3, std_req::GET_STATUS, 0) => {
            if p.resetting {
                if p.reset_polls > 0 {
                    p.reset_polls -= 1;
                } else {
                    p.resetting = false;
                    if connected {
                        p.enabled = true;
                    }
                    p.change |= port_change::C_RESET;
                }
            }
            let mut status = 0u16;
            if connected {
                status |= port_status::CONNECTION;
            }
            if p.enabled {
                status |= port_status::ENABLE;
                match p.device.as_ref().map(|d| d.0) {
                    Some(Speed::Low) => status |= port_status::LOW_SPEED,
                    Some(Speed::High) => status |= port_status::HIGH_SPEED,
                    _ => {}
                }
            }
            if p.resetting {
                status |= port_status::RESET;
            }
            if p.powered {
                status |= port_status::POWER;
            }
            let change = if p.powered { p.change } else { 0 };
            let b = [status.to_le_bytes(), change.to_le_bytes()].concat();
            let n = b.len().min(setup.length as usize);
            data[..n].copy_from_slice(&b[..n]);
            Ok(n)
        }
        (0x23, std_req::SET_FEATURE, POWER) => {
            p.powered = true;
            Ok(0)
        }
        (0x23, std_req::SET_FEATURE, RESET) => {
            if !p.powered {
                return Err(TransferError::Stall);
            }
            p.resetting = true;
            p.enabled = false;
            Ok(0)
        }
        (0x23, std_req::CLEAR_FEATURE, ENABLE) => {
            p.enabled = false;
            Ok(0)
        }
        (0x23, std_req::CLEAR_FEATURE, POWER) => {
            p.powered = false;
            p.enabled = false;
            Ok(0)
        }
        (0x23, std_req::CLEAR_FEATURE, f) if (16..=20).contains(&f) => {
            p.change &= !(1 << (f - 16));
            Ok(0)
        }
        _ => Err(TransferError::Stall),
    }
}

impl HostController for FakeHostController {
    fn port_count(&self) -> u8 {
        self.ports.len() as u8
    }

    fn port_status(&mut self, port: u8) -> PortStatus {
        let p = &self.ports[port as usize - 1];
        PortStatus {
            connected: p.device.is_some(),
            enabled: p.enabled,
            speed: p.device.as_ref().filter(|_| p.enabled).map(|d| d.0),
            usb_major: 2,
            connect_changed: p.connect_changed,
        }
    }

    fn acknowledge_port_change(&mut self, port: u8) {
        self.ports[port as usize - 1].connect_changed = false;
    }

    fn reset_port(&mut self, port: u8) -> Result<Speed, TransferError> {
        let p = self
            .ports
            .get_mut((port as usize).wrapping_sub(1))
            .ok_or(TransferError::Controller(format!("no root port {port}")))?;
        match &p.device {
            Some((s, _)) => {
                p.enabled = true;
                Ok(*s)
            }
            None => Err(TransferError::Disconnected),
        }
    }

    fn address_device(&mut self, at: Attachment) -> Result<DeviceHandle, TransferError> {
        let path = self.resolve(&at)?;
        if self.live.iter().any(|l| l.path == path) {
            return Err(TransferError::Controller("device already addressed".into()));
        }
        let dev = self.device_at(&path).ok_or(TransferError::Transaction)?;
        if let Some(e) = dev.address_error.clone() {
            return Err(e);
        }
        if self.next_handle > 255 {
            return Err(TransferError::NoResources("slots"));
        }
        let handle = self.next_handle as DeviceHandle;
        self.next_handle += 1;
        self.live.push(Live {
            handle,
            path,
            ep0_max_packet: at.speed.default_ep0_max_packet(),
            configuration: 0,
        });
        self.addressed.push((handle, at));
        Ok(handle)
    }

    fn set_ep0_max_packet(
        &mut self,
        device: DeviceHandle,
        max_packet: u16,
    ) -> Result<(), TransferError> {
        self.ep0_updates.push((device, max_packet));
        let i = self
            .live
            .iter()
            .position(|l| l.handle == device)
            .ok_or(TransferError::Controller(format!("no device {device}")))?;
        let path = self.live[i].path.clone();
        if let Some(e) = self.device_at(&path).and_then(|d| d.ep0_error.clone()) {
            return Err(e);
        }
        self.live[i].ep0_max_packet = max_packet;
        Ok(())
    }

    fn control_transfer(
        &mut self,
        device: DeviceHandle,
        setup: SetupPacket,
        data: &mut [u8],
        _timeout_ms: u32,
    ) -> Result<usize, TransferError> {
        let result = self.transfer(device, setup, data);
        self.requests.push(Recorded {
            device,
            setup,
            result: result.clone(),
        });
        result
    }

    fn release_device(&mut self, device: DeviceHandle) -> Result<(), TransferError> {
        self.released.push(device);
        let i = self
            .live
            .iter()
            .position(|l| l.handle == device)
            .ok_or(TransferError::Controller(format!("no device {device}")))?;
        self.live.remove(i);
        Ok(())
    }

    fn configure_hub(
        &mut self,
        device: DeviceHandle,
        ports: u8,
        tt_think_time_bits: u8,
        multi_tt: bool,
    ) -> Result<(), TransferError> {
        self.hub_configs
            .push((device, ports, tt_think_time_bits, multi_tt));
        Ok(())
    }
}
