//! Boot information handed over by the loader: Xen PVH `hvm_start_info` or a multiboot2
//! information block.
//!
//! Everything is read through [`PhysMemory`], which may refuse any address, and every length
//! taken from the structures is checked against a fixed limit before use, so corrupt input gives a
//! [`BootInfoError`] rather than a wild read, a huge allocation or a panic.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;

/// Physical memory as the parser sees it (the kernel's impl copies from identity-mapped memory;
/// tests use a fake).
pub trait PhysMemory {
    /// Fills `buf` from `phys..phys + buf.len()`, or fails (usually with
    /// [`BootInfoError::unreadable`]) if any byte of that range may not be read.
    fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), BootInfoError>;
}

/// First u32 of `hvm_start_info`.
pub const PVH_START_MAGIC: u32 = 0x336e_c578;
/// EAX at a multiboot2 entry.
pub const MULTIBOOT2_LOADER_MAGIC: u32 = 0x36d7_6289;

/// Longest command line (bytes before the NUL) and boot loader name accepted.
pub const MAX_CMDLINE: usize = 4096;
/// Most memory-map entries accepted from either loader.
pub const MAX_MEMMAP_ENTRIES: usize = 4096;
/// Largest multiboot2 `total_size` accepted.
pub const MAX_MULTIBOOT2_SIZE: u32 = 1 << 20;
/// Granularity [`BootInfo::usable_ranges`] shrinks to.
pub const PAGE_SIZE: u64 = 4096;

const PVH_HEADER_V1_LEN: usize = 56;
const PVH_MEMMAP_ENTRY_LEN: u64 = 24;
const MB2_MMAP_ENTRY_MIN: u32 = 24;
const RSDP_V1_LEN: u32 = 20;
const RSDP_V2_LEN: u32 = 36;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loader {
    Pvh,
    Multiboot2,
}

impl fmt::Display for Loader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Loader::Pvh => "PVH",
            Loader::Multiboot2 => "multiboot2",
        })
    }
}

/// E820 memory type (both loaders use the E820 numbering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionKind {
    Usable,
    Reserved,
    AcpiReclaimable,
    AcpiNvs,
    Bad,
    Unknown(u32),
}

impl RegionKind {
    pub fn from_e820(value: u32) -> RegionKind {
        match value {
            1 => RegionKind::Usable,
            2 => RegionKind::Reserved,
            3 => RegionKind::AcpiReclaimable,
            4 => RegionKind::AcpiNvs,
            5 => RegionKind::Bad,
            other => RegionKind::Unknown(other),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRegion {
    pub start: u64,
    pub len: u64,
    pub kind: RegionKind,
}

impl MemoryRegion {
    /// `[start, end)`, with the end clamped at the top of the address space.
    pub fn range(&self) -> Range<u64> {
        self.start..self.start.saturating_add(self.len)
    }
}

/// Where one colour channel sits inside a pixel: `(pixel >> shift) & ((1 << bits) - 1)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ColorField {
    pub shift: u8,
    pub bits: u8,
}

/// A linear framebuffer with direct RGB colour (indexed and text modes are not reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Framebuffer {
    pub addr: u64,
    pub pitch: u32,
    pub width: u32,
    pub height: u32,
    pub bpp: u8,
    /// Channel layouts; UEFI GOP usually gives red at 16, green at 8, blue at 0.
    pub red: ColorField,
    pub green: ColorField,
    pub blue: ColorField,
}

impl Framebuffer {
    /// Bytes from `addr` the framebuffer covers (`pitch * height`).
    pub fn size_bytes(&self) -> u64 {
        u64::from(self.pitch) * u64::from(self.height)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    pub loader: Loader,
    /// As the loader gave it: unsorted, possibly overlapping; see [`BootInfo::usable_ranges`].
    pub memory_map: Vec<MemoryRegion>,
    /// Physical address of an RSDP structure (for multiboot2 the loader's copy inside the info).
    pub rsdp: Option<u64>,
    pub cmdline: String,
    pub bootloader_name: Option<String>,
    pub framebuffer: Option<Framebuffer>,
}

impl BootInfo {
    /// Usable RAM as sorted, merged, non-overlapping `[start, end)` ranges, shrunk inward to 4 KiB
    /// pages, with any part that a non-usable region also covers removed (firmware maps can
    /// overlap). Consecutive ranges never touch.
    pub fn usable_ranges(&self) -> Vec<Range<u64>> {
        let usable = merged(
            self.memory_map
                .iter()
                .filter(|r| r.kind == RegionKind::Usable)
                .map(MemoryRegion::range),
        );
        let holes = merged(
            self.memory_map
                .iter()
                .filter(|r| r.kind != RegionKind::Usable)
                .map(MemoryRegion::range),
        );

        let mut out = Vec::new();
        let mut push = |r: Range<u64>| {
            // Shrink inward: a partial page at either end may hold something we must not touch.
            let start = match r.start.checked_add(PAGE_SIZE - 1) {
                Some(s) => s & !(PAGE_SIZE - 1),
                None => return,
            };
            let end = r.end & !(PAGE_SIZE - 1);
            if start < end {
                out.push(start..end);
            }
        };
        // Both lists are sorted and disjoint, so one pass over the holes suffices.
        let mut first_hole = 0;
        for u in usable {
            while first_hole < holes.len() && holes[first_hole].end <= u.start {
                first_hole += 1;
            }
            let mut cur = u.start;
            for h in &holes[first_hole..] {
                if h.start >= u.end {
                    break;
                }
                if h.start > cur {
                    push(cur..h.start);
                }
                cur = cur.max(h.end);
                if cur >= u.end {
                    break;
                }
            }
            if cur < u.end {
                push(cur..u.end);
            }
        }
        out
    }

    /// Total bytes in [`BootInfo::usable_ranges`].
    pub fn usable_bytes(&self) -> u64 {
        self.usable_ranges()
            .iter()
            .map(|r| r.end - r.start)
            .fold(0u64, u64::saturating_add)
    }
}

/// Sorts and merges ranges; touching ranges merge too. Empty ranges are dropped.
fn merged(ranges: impl Iterator<Item = Range<u64>>) -> Vec<Range<u64>> {
    let mut v: Vec<Range<u64>> = ranges.filter(|r| r.start < r.end).collect();
    v.sort_unstable_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

/// What is wrong with the boot information, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootInfoError {
    /// `phys..phys+len` could not be read; `what` names the structure being read.
    Unreadable {
        what: &'static str,
        phys: u64,
        len: u64,
    },
    /// An address plus a length from the structures runs past 2^64.
    AddressOverflow {
        what: &'static str,
        phys: u64,
        len: u64,
    },
    BadMagic {
        what: &'static str,
        phys: u64,
        expected: u32,
        found: u32,
    },
    /// Neither EAX nor the first u32 at EBX identifies a loader we know.
    UnknownLoader { eax: u32, ebx: u64, found: u32 },
    /// PVH `hvm_start_info` version 0 has no memory map.
    PvhVersionTooOld { phys: u64, version: u32 },
    /// The loader gave no memory map, or an empty one.
    NoMemoryMap { loader: Loader },
    TooManyEntries {
        what: &'static str,
        count: u64,
        max: usize,
    },
    /// Multiboot2 `total_size` outside 8..=1 MiB.
    TotalSize { phys: u64, value: u32 },
    /// A multiboot2 tag's `size` is below its minimum. `offset` is from the info start.
    TagTooSmall {
        offset: u32,
        tag_type: u32,
        size: u32,
        min: u32,
    },
    /// A multiboot2 tag's `size` runs past `total_size`.
    TagPastEnd {
        offset: u32,
        tag_type: u32,
        size: u32,
        total_size: u32,
    },
    /// The tags reach `total_size` without an end tag (type 0).
    MissingEndTag { total_size: u32 },
    /// Multiboot2 memory map `entry_size` below 24.
    EntrySize { offset: u32, value: u32 },
    /// A string has more than `max` bytes before its NUL.
    StringTooLong {
        what: &'static str,
        phys: u64,
        max: usize,
    },
    /// An RGB framebuffer tag with impossible geometry or channel layout.
    BadFramebuffer { offset: u32, reason: &'static str },
    /// An ACPI RSDP tag whose copy does not start with `RSD PTR `.
    BadRsdp { offset: u32, tag_type: u32 },
}

impl BootInfoError {
    /// For [`PhysMemory`] impls: `phys..phys+len` may not be read. The parser fills in `what`.
    pub fn unreadable(phys: u64, len: usize) -> BootInfoError {
        BootInfoError::Unreadable {
            what: "memory",
            phys,
            len: len as u64,
        }
    }
}

impl fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use BootInfoError::*;
        match *self {
            Unreadable { what, phys, len } => {
                write!(f, "{what}: cannot read {len} bytes at {phys:#x}")
            }
            AddressOverflow { what, phys, len } => write!(
                f,
                "{what}: {len} bytes at {phys:#x} run past the end of the address space"
            ),
            BadMagic {
                what,
                phys,
                expected,
                found,
            } => write!(
                f,
                "{what} at {phys:#x}: magic is {found:#010x}, expected {expected:#010x}"
            ),
            UnknownLoader { eax, ebx, found } => write!(
                f,
                "unknown boot loader: EAX={eax:#010x} is not the multiboot2 magic \
                 {MULTIBOOT2_LOADER_MAGIC:#010x} and [EBX={ebx:#x}]={found:#010x} is not the \
                 PVH magic {PVH_START_MAGIC:#010x}"
            ),
            PvhVersionTooOld { phys, version } => write!(
                f,
                "PVH start info at {phys:#x}: version {version} has no memory map (need >= 1)"
            ),
            NoMemoryMap { loader } => write!(f, "{loader} boot info has no (or an empty) memory map"),
            TooManyEntries { what, count, max } => {
                write!(f, "{what}: {count} entries, at most {max} accepted")
            }
            TotalSize { phys, value } => write!(
                f,
                "multiboot2 info at {phys:#x}: total_size {value} is outside 8..={MAX_MULTIBOOT2_SIZE}"
            ),
            TagTooSmall {
                offset,
                tag_type,
                size,
                min,
            } => write!(
                f,
                "multiboot2 tag type {tag_type} at offset {offset:#x}: size {size} is below its minimum {min}"
            ),
            TagPastEnd {
                offset,
                tag_type,
                size,
                total_size,
            } => write!(
                f,
                "multiboot2 tag type {tag_type} at offset {offset:#x}: size {size} runs past total_size {total_size}"
            ),
            MissingEndTag { total_size } => write!(
                f,
                "multiboot2 info: no end tag within total_size {total_size}"
            ),
            EntrySize { offset, value } => write!(
                f,
                "multiboot2 memory map tag at offset {offset:#x}: entry_size {value} is below {MB2_MMAP_ENTRY_MIN}"
            ),
            StringTooLong { what, phys, max } => write!(
                f,
                "{what} at {phys:#x}: longer than {max} bytes"
            ),
            BadFramebuffer { offset, reason } => write!(
                f,
                "multiboot2 framebuffer tag at offset {offset:#x}: {reason}"
            ),
            BadRsdp { offset, tag_type } => write!(
                f,
                "multiboot2 ACPI tag type {tag_type} at offset {offset:#x}: copy lacks the `RSD PTR ` signature"
            ),
        }
    }
}

/// Reads through `mem`, checking for wrap-around and naming `what` in an unreadable error.
fn read_bytes<M: PhysMemory + ?Sized>(
    mem: &M,
    what: &'static str,
    phys: u64,
    buf: &mut [u8],
) -> Result<(), BootInfoError> {
    let len = buf.len() as u64;
    if phys.checked_add(len).is_none() {
        return Err(BootInfoError::AddressOverflow { what, phys, len });
    }
    mem.read(phys, buf).map_err(|e| match e {
        BootInfoError::Unreadable { phys, len, .. } => {
            BootInfoError::Unreadable { what, phys, len }
        }
        other => other,
    })
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(off..off + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(off..off + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// Decodes one 24-byte `{u64 base, u64 len, u32 type, u32 reserved}` entry.
fn region_from(entry: &[u8]) -> MemoryRegion {
    MemoryRegion {
        start: u64_at(entry, 0),
        len: u64_at(entry, 8),
        kind: RegionKind::from_e820(u32_at(entry, 16)),
    }
}

/// Reads a NUL-terminated string of at most `max` bytes. Reads in 64-byte aligned chunks (never
/// crossing a page) and falls back to single bytes so a string ending just before unreadable
/// memory still parses.
fn read_cstring<M: PhysMemory + ?Sized>(
    mem: &M,
    what: &'static str,
    phys: u64,
    max: usize,
) -> Result<String, BootInfoError> {
    const CHUNK: u64 = 64;
    let mut bytes = Vec::new();
    let mut addr = phys;
    loop {
        let room = (max + 1 - bytes.len()) as u64;
        let n = (CHUNK - addr % CHUNK).min(room) as usize;
        let mut chunk = [0u8; CHUNK as usize];
        let chunk = &mut chunk[..n];
        if read_bytes(mem, what, addr, chunk).is_err() {
            // Byte by byte: stops at the NUL or at the first byte that really is unreadable.
            for i in 0..n as u64 {
                let mut b = [0u8; 1];
                read_bytes(mem, what, addr + i, &mut b)?;
                if b[0] == 0 {
                    return Ok(String::from_utf8_lossy(&bytes).into_owned());
                }
                bytes.push(b[0]);
            }
        } else if let Some(nul) = chunk.iter().position(|&b| b == 0) {
            bytes.extend_from_slice(&chunk[..nul]);
            return Ok(String::from_utf8_lossy(&bytes).into_owned());
        } else {
            bytes.extend_from_slice(chunk);
        }
        if bytes.len() > max {
            return Err(BootInfoError::StringTooLong { what, phys, max });
        }
        // `n >= 1` and the address is below 2^64 - n (read_bytes checked), so this cannot wrap.
        addr += n as u64;
    }
}

/// Parses a Xen PVH `hvm_start_info` at `start_info_phys` (EBX at a PVH entry).
pub fn parse_pvh(mem: &impl PhysMemory, start_info_phys: u64) -> Result<BootInfo, BootInfoError> {
    const WHAT: &str = "PVH start info";
    let mut head = [0u8; 8];
    read_bytes(mem, WHAT, start_info_phys, &mut head)?;
    let magic = u32_at(&head, 0);
    if magic != PVH_START_MAGIC {
        return Err(BootInfoError::BadMagic {
            what: WHAT,
            phys: start_info_phys,
            expected: PVH_START_MAGIC,
            found: magic,
        });
    }
    let version = u32_at(&head, 4);
    if version == 0 {
        return Err(BootInfoError::PvhVersionTooOld {
            phys: start_info_phys,
            version,
        });
    }
    // Later versions append fields, so the version 1 prefix stays valid.
    let mut hdr = [0u8; PVH_HEADER_V1_LEN];
    read_bytes(mem, WHAT, start_info_phys, &mut hdr)?;
    let cmdline_paddr = u64_at(&hdr, 24);
    let rsdp_paddr = u64_at(&hdr, 32);
    let memmap_paddr = u64_at(&hdr, 40);
    let memmap_entries = u32_at(&hdr, 48);

    if memmap_paddr == 0 || memmap_entries == 0 {
        return Err(BootInfoError::NoMemoryMap {
            loader: Loader::Pvh,
        });
    }
    if memmap_entries as usize > MAX_MEMMAP_ENTRIES {
        return Err(BootInfoError::TooManyEntries {
            what: "PVH memory map",
            count: u64::from(memmap_entries),
            max: MAX_MEMMAP_ENTRIES,
        });
    }
    let table_len = u64::from(memmap_entries) * PVH_MEMMAP_ENTRY_LEN;
    if memmap_paddr.checked_add(table_len).is_none() {
        return Err(BootInfoError::AddressOverflow {
            what: "PVH memory map",
            phys: memmap_paddr,
            len: table_len,
        });
    }
    let mut memory_map = Vec::with_capacity(memmap_entries as usize);
    for i in 0..u64::from(memmap_entries) {
        let mut e = [0u8; PVH_MEMMAP_ENTRY_LEN as usize];
        read_bytes(
            mem,
            "PVH memory map entry",
            memmap_paddr + i * PVH_MEMMAP_ENTRY_LEN,
            &mut e,
        )?;
        memory_map.push(region_from(&e));
    }

    let cmdline = if cmdline_paddr == 0 {
        String::new()
    } else {
        read_cstring(mem, "PVH cmdline", cmdline_paddr, MAX_CMDLINE)?
    };

    Ok(BootInfo {
        loader: Loader::Pvh,
        memory_map,
        rsdp: (rsdp_paddr != 0).then_some(rsdp_paddr),
        cmdline,
        bootloader_name: None,
        framebuffer: None,
    })
}

/// Parses a multiboot2 information block at `info_phys` (EBX at a multiboot2 entry).
///
/// Unknown tags are skipped; when a tag repeats, the last one wins (except the RSDP, where tag
/// 15 is preferred over 14 wherever they appear).
pub fn parse_multiboot2(mem: &impl PhysMemory, info_phys: u64) -> Result<BootInfo, BootInfoError> {
    let mut head = [0u8; 8];
    read_bytes(mem, "multiboot2 info header", info_phys, &mut head)?;
    let total = u32_at(&head, 0);
    if !(8..=MAX_MULTIBOOT2_SIZE).contains(&total) {
        return Err(BootInfoError::TotalSize {
            phys: info_phys,
            value: total,
        });
    }
    if info_phys.checked_add(u64::from(total)).is_none() {
        return Err(BootInfoError::AddressOverflow {
            what: "multiboot2 info",
            phys: info_phys,
            len: u64::from(total),
        });
    }

    let mut info = BootInfo {
        loader: Loader::Multiboot2,
        memory_map: Vec::new(),
        rsdp: None,
        cmdline: String::new(),
        bootloader_name: None,
        framebuffer: None,
    };
    let (mut rsdp_v1, mut rsdp_v2) = (None, None);
    let mut offset: u32 = 8;
    loop {
        if total - offset < 8 {
            return Err(BootInfoError::MissingEndTag { total_size: total });
        }
        let phys = info_phys + u64::from(offset);
        let mut th = [0u8; 8];
        read_bytes(mem, "multiboot2 tag header", phys, &mut th)?;
        let tag = Tag {
            phys,
            offset,
            tag_type: u32_at(&th, 0),
            size: u32_at(&th, 4),
        };
        tag.need(8)?;
        if tag.size > total - offset {
            return Err(BootInfoError::TagPastEnd {
                offset,
                tag_type: tag.tag_type,
                size: tag.size,
                total_size: total,
            });
        }
        match tag.tag_type {
            0 => break,
            1 => info.cmdline = tag.string(mem, "multiboot2 cmdline")?,
            2 => info.bootloader_name = Some(tag.string(mem, "multiboot2 boot loader name")?),
            6 => info.memory_map = tag.memory_map(mem)?,
            8 => info.framebuffer = tag.framebuffer(mem)?,
            14 => rsdp_v1 = Some(tag.rsdp(mem, RSDP_V1_LEN)?),
            15 => rsdp_v2 = Some(tag.rsdp(mem, RSDP_V2_LEN)?),
            _ => {}
        }
        // Tags start 8-byte aligned; `offset + size <= total <= 1 MiB`, so no overflow.
        let next = (offset + tag.size + 7) & !7;
        if next > total {
            return Err(BootInfoError::MissingEndTag { total_size: total });
        }
        offset = next;
    }
    if info.memory_map.is_empty() {
        return Err(BootInfoError::NoMemoryMap {
            loader: Loader::Multiboot2,
        });
    }
    info.rsdp = rsdp_v2.or(rsdp_v1);
    Ok(info)
}

/// One multiboot2 tag whose header has been read and whose size lies within `total_size`.
#[derive(Clone, Copy)]
struct Tag {
    phys: u64,
    offset: u32,
    tag_type: u32,
    size: u32,
}

impl Tag {
    fn need(&self, min: u32) -> Result<(), BootInfoError> {
        if self.size < min {
            return Err(BootInfoError::TagTooSmall {
                offset: self.offset,
                tag_type: self.tag_type,
                size: self.size,
                min,
            });
        }
        Ok(())
    }

    /// Tag body as a string: up to the first NUL, or the whole body if it has none.
    fn string<M: PhysMemory + ?Sized>(
        &self,
        mem: &M,
        what: &'static str,
    ) -> Result<String, BootInfoError> {
        let body_len = (self.size - 8) as usize;
        // One byte more than the limit tells "exactly max" from "too long".
        let mut buf = alloc::vec![0u8; body_len.min(MAX_CMDLINE + 1)];
        read_bytes(mem, what, self.phys + 8, &mut buf)?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        if end > MAX_CMDLINE {
            return Err(BootInfoError::StringTooLong {
                what,
                phys: self.phys + 8,
                max: MAX_CMDLINE,
            });
        }
        Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
    }

    fn memory_map<M: PhysMemory + ?Sized>(
        &self,
        mem: &M,
    ) -> Result<Vec<MemoryRegion>, BootInfoError> {
        self.need(16)?;
        let mut h = [0u8; 8];
        read_bytes(mem, "multiboot2 memory map header", self.phys + 8, &mut h)?;
        let entry_size = u32_at(&h, 0);
        if entry_size < MB2_MMAP_ENTRY_MIN {
            return Err(BootInfoError::EntrySize {
                offset: self.offset,
                value: entry_size,
            });
        }
        // entry_version (h[4..8]) is 0 in every loader; later versions may only append fields.
        // A partial entry at the end is padding and is ignored.
        let count = (self.size - 16) / entry_size;
        if count as usize > MAX_MEMMAP_ENTRIES {
            return Err(BootInfoError::TooManyEntries {
                what: "multiboot2 memory map",
                count: u64::from(count),
                max: MAX_MEMMAP_ENTRIES,
            });
        }
        let mut map = Vec::with_capacity(count as usize);
        for i in 0..u64::from(count) {
            let mut e = [0u8; MB2_MMAP_ENTRY_MIN as usize];
            let at = self.phys + 16 + i * u64::from(entry_size);
            read_bytes(mem, "multiboot2 memory map entry", at, &mut e)?;
            map.push(region_from(&e));
        }
        Ok(map)
    }

    /// `None` for indexed-colour and text modes; an error for an RGB mode that cannot be right.
    fn framebuffer<M: PhysMemory + ?Sized>(
        &self,
        mem: &M,
    ) -> Result<Option<Framebuffer>, BootInfoError> {
        // Common part: addr u64, pitch, width, height u32, bpp u8, type u8, reserved u16 (GRUB's
        // layout; the spec text shows a u8 reserved but GRUB puts colour info at offset 32).
        self.need(30)?;
        let mut b = [0u8; 30];
        read_bytes(mem, "multiboot2 framebuffer tag", self.phys, &mut b)?;
        if b[29] != 1 {
            return Ok(None);
        }
        self.need(38)?;
        let mut c = [0u8; 6];
        read_bytes(
            mem,
            "multiboot2 framebuffer colour info",
            self.phys + 32,
            &mut c,
        )?;
        let fb = Framebuffer {
            addr: u64_at(&b, 8),
            pitch: u32_at(&b, 16),
            width: u32_at(&b, 20),
            height: u32_at(&b, 24),
            bpp: b[28],
            red: ColorField {
                shift: c[0],
                bits: c[1],
            },
            green: ColorField {
                shift: c[2],
                bits: c[3],
            },
            blue: ColorField {
                shift: c[4],
                bits: c[5],
            },
        };
        let bad = |reason| BootInfoError::BadFramebuffer {
            offset: self.offset,
            reason,
        };
        if fb.addr == 0 {
            return Err(bad("address is 0"));
        }
        if fb.width == 0 || fb.height == 0 {
            return Err(bad("width or height is 0"));
        }
        if !(8..=32).contains(&fb.bpp) {
            return Err(bad("bits per pixel outside 8..=32"));
        }
        let bytes_pp = u64::from(fb.bpp).div_ceil(8);
        if u64::from(fb.pitch) < u64::from(fb.width) * bytes_pp {
            return Err(bad("pitch is smaller than width * bytes per pixel"));
        }
        if fb.addr.checked_add(fb.size_bytes()).is_none() {
            return Err(bad("pitch * height runs past the end of the address space"));
        }
        for f in [fb.red, fb.green, fb.blue] {
            if f.bits == 0 || u32::from(f.shift) + u32::from(f.bits) > u32::from(fb.bpp) {
                return Err(bad("a colour channel is empty or lies outside the pixel"));
            }
        }
        Ok(Some(fb))
    }

    /// Checks the copy looks like an RSDP and returns its physical address.
    fn rsdp<M: PhysMemory + ?Sized>(&self, mem: &M, len: u32) -> Result<u64, BootInfoError> {
        self.need(8 + len)?;
        let mut sig = [0u8; 8];
        read_bytes(mem, "multiboot2 ACPI RSDP copy", self.phys + 8, &mut sig)?;
        if &sig != b"RSD PTR " {
            return Err(BootInfoError::BadRsdp {
                offset: self.offset,
                tag_type: self.tag_type,
            });
        }
        Ok(self.phys + 8)
    }
}

/// Picks the parser from the registers at the 32-bit entry: EAX = multiboot2 magic means EBX
/// points at multiboot2 info, otherwise EBX must point at a PVH start info.
pub fn parse_entry(mem: &impl PhysMemory, eax: u32, ebx: u64) -> Result<BootInfo, BootInfoError> {
    if eax == MULTIBOOT2_LOADER_MAGIC {
        return parse_multiboot2(mem, ebx);
    }
    let mut m = [0u8; 4];
    read_bytes(mem, "boot info at EBX", ebx, &mut m)?;
    let found = u32::from_le_bytes(m);
    if found != PVH_START_MAGIC {
        return Err(BootInfoError::UnknownLoader { eax, ebx, found });
    }
    parse_pvh(mem, ebx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;
    use std::string::String;
    use std::vec::Vec;

    /// Sparse fake RAM: reads succeed only inside one of the stored regions.
    #[derive(Default)]
    struct FakeMem {
        regions: Vec<(u64, Vec<u8>)>,
    }

    impl FakeMem {
        /// Patches an existing region if it holds the whole range, else adds a region (later
        /// regions shadow earlier ones).
        fn put(&mut self, phys: u64, bytes: &[u8]) {
            let end = phys + bytes.len() as u64;
            for (base, old) in self.regions.iter_mut().rev() {
                if phys >= *base && end <= *base + old.len() as u64 {
                    let off = (phys - *base) as usize;
                    old[off..off + bytes.len()].copy_from_slice(bytes);
                    return;
                }
            }
            self.regions.push((phys, bytes.to_vec()));
        }
    }

    impl PhysMemory for FakeMem {
        fn read(&self, phys: u64, buf: &mut [u8]) -> Result<(), BootInfoError> {
            let end = phys
                .checked_add(buf.len() as u64)
                .ok_or(BootInfoError::unreadable(phys, buf.len()))?;
            for (base, bytes) in self.regions.iter().rev() {
                if phys >= *base && end <= base + bytes.len() as u64 {
                    let off = (phys - base) as usize;
                    buf.copy_from_slice(&bytes[off..off + buf.len()]);
                    return Ok(());
                }
            }
            Err(BootInfoError::unreadable(phys, buf.len()))
        }
    }

    fn entry(base: u64, len: u64, ty: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&base.to_le_bytes());
        v.extend_from_slice(&len.to_le_bytes());
        v.extend_from_slice(&ty.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v
    }

    /// QEMU's e820 for `-m 128M` on q35.
    fn qemu_map() -> Vec<(u64, u64, u32)> {
        vec![
            (0, 0x9fc00, 1),
            (0x9fc00, 0x400, 2),
            (0xf0000, 0x10000, 2),
            (0x10_0000, 0x7ee_0000, 1),
            (0x7fe_0000, 0x2_0000, 2),
            (0xb000_0000, 0x1000_0000, 2),
            (0xfeff_c000, 0x4000, 2),
            (0xfffc_0000, 0x4_0000, 2),
        ]
    }

    fn pvh_header(version: u32, cmdline: u64, rsdp: u64, memmap: u64, n: u32) -> Vec<u8> {
        let mut h = Vec::new();
        for v in [PVH_START_MAGIC, version, 0, 0] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0u64, cmdline, rsdp, memmap] {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h.extend_from_slice(&n.to_le_bytes());
        h.extend_from_slice(&0u32.to_le_bytes());
        h
    }

    /// Lays out start info, cmdline and memmap the way QEMU's PVH loader does (separate spots).
    fn pvh_mem(cmdline: &[u8], map: &[(u64, u64, u32)]) -> FakeMem {
        let mut m = FakeMem::default();
        m.put(
            0x6000,
            &pvh_header(1, 0x2_0000, 0xf_5a40, 0x8000, map.len() as u32),
        );
        let mut c = cmdline.to_vec();
        c.push(0);
        m.put(0x2_0000, &c);
        let e: Vec<u8> = map.iter().flat_map(|&(b, l, t)| entry(b, l, t)).collect();
        m.put(0x8000, &e);
        m
    }

    #[test]
    fn pvh_as_qemu_lays_it_out() {
        let m = pvh_mem(b"log=debug console=ttyS0", &qemu_map());
        let bi = parse_pvh(&m, 0x6000).unwrap();
        assert_eq!(bi.loader, Loader::Pvh);
        assert_eq!(bi.cmdline, "log=debug console=ttyS0");
        assert_eq!(bi.rsdp, Some(0xf_5a40));
        assert_eq!(bi.memory_map.len(), 8);
        assert_eq!(
            bi.memory_map[1],
            MemoryRegion {
                start: 0x9fc00,
                len: 0x400,
                kind: RegionKind::Reserved
            }
        );
        assert_eq!(bi.bootloader_name, None);
        assert_eq!(bi.usable_ranges(), vec![0..0x9f000, 0x10_0000..0x7fe_0000]);
        assert_eq!(parse_entry(&m, 0, 0x6000).unwrap(), bi);
    }

    #[test]
    fn pvh_rejects_bad_magic_version_and_missing_map() {
        let mut m = pvh_mem(b"", &qemu_map());
        m.put(0x6000, &0xdead_beefu32.to_le_bytes());
        let e = parse_pvh(&m, 0x6000).unwrap_err();
        assert!(matches!(
            e,
            BootInfoError::BadMagic {
                found: 0xdead_beef,
                ..
            }
        ));
        assert!(e.to_string().contains("0xdeadbeef"));
        assert!(matches!(
            parse_entry(&m, 0x1234, 0x6000),
            Err(BootInfoError::UnknownLoader {
                found: 0xdead_beef,
                ..
            })
        ));

        let mut m = FakeMem::default();
        m.put(0x6000, &pvh_header(0, 0, 0, 0, 0)[..40]);
        let e = parse_pvh(&m, 0x6000).unwrap_err();
        assert_eq!(
            e,
            BootInfoError::PvhVersionTooOld {
                phys: 0x6000,
                version: 0
            }
        );
        assert!(e.to_string().contains("version 0"));

        let mut m = FakeMem::default();
        m.put(0x6000, &pvh_header(1, 0, 0, 0x8000, 0));
        assert_eq!(
            parse_pvh(&m, 0x6000),
            Err(BootInfoError::NoMemoryMap {
                loader: Loader::Pvh
            })
        );
        m.put(0x6000, &pvh_header(1, 0, 0, 0, 3));
        assert_eq!(
            parse_pvh(&m, 0x6000),
            Err(BootInfoError::NoMemoryMap {
                loader: Loader::Pvh
            })
        );
    }

    #[test]
    fn pvh_limits_and_unreadable_memory() {
        // Truncated header: version 1 but only 40 bytes present.
        let mut m = FakeMem::default();
        m.put(0x6000, &pvh_header(1, 0, 0, 0x8000, 1)[..40]);
        assert!(matches!(
            parse_pvh(&m, 0x6000),
            Err(BootInfoError::Unreadable {
                what: "PVH start info",
                ..
            })
        ));
        // Nothing there at all.
        assert!(matches!(
            parse_pvh(&FakeMem::default(), 0x6000),
            Err(BootInfoError::Unreadable { phys: 0x6000, .. })
        ));
        // Huge entry count.
        let mut m = FakeMem::default();
        m.put(0x6000, &pvh_header(1, 0, 0, 0x8000, u32::MAX));
        assert!(matches!(
            parse_pvh(&m, 0x6000),
            Err(BootInfoError::TooManyEntries {
                count: 0xffff_ffff,
                ..
            })
        ));
        // Memmap that wraps the address space.
        m.put(0x6000, &pvh_header(1, 0, 0, u64::MAX - 10, 2));
        assert!(matches!(
            parse_pvh(&m, 0x6000),
            Err(BootInfoError::AddressOverflow { .. })
        ));
        // Memmap claims 3 entries, 2 are readable.
        let mut m = pvh_mem(b"", &[(0, 0x1000, 1), (0x1000, 0x1000, 1)]);
        m.put(0x6000, &pvh_header(1, 0x2_0000, 0, 0x8000, 3));
        let e = parse_pvh(&m, 0x6000).unwrap_err();
        assert_eq!(
            e,
            BootInfoError::Unreadable {
                what: "PVH memory map entry",
                phys: 0x8030,
                len: 24
            }
        );
        assert!(e.to_string().contains("0x8030"));
        // Start info at the very top of the address space.
        assert!(matches!(
            parse_pvh(&m, u64::MAX - 3),
            Err(BootInfoError::AddressOverflow { .. })
        ));
    }

    #[test]
    fn pvh_cmdline_edges() {
        // No cmdline pointer: empty string.
        let mut m = pvh_mem(b"", &qemu_map());
        m.put(0x6000, &pvh_header(1, 0, 0, 0x8000, 8));
        let bi = parse_pvh(&m, 0x6000).unwrap();
        assert_eq!(bi.cmdline, "");
        assert_eq!(bi.rsdp, None);

        // Exactly the limit is fine; one more byte is an error.
        let ok = vec![b'a'; MAX_CMDLINE];
        assert_eq!(
            parse_pvh(&pvh_mem(&ok, &qemu_map()), 0x6000)
                .unwrap()
                .cmdline
                .len(),
            MAX_CMDLINE
        );
        let long = vec![b'a'; MAX_CMDLINE + 1];
        let e = parse_pvh(&pvh_mem(&long, &qemu_map()), 0x6000).unwrap_err();
        assert!(matches!(
            e,
            BootInfoError::StringTooLong {
                what: "PVH cmdline",
                ..
            }
        ));

        // Unterminated and running into unreadable memory.
        let mut m = pvh_mem(b"", &qemu_map());
        m.put(0x2_0000, b"abc");
        assert!(matches!(
            parse_pvh(&m, 0x6000),
            Err(BootInfoError::Unreadable {
                what: "PVH cmdline",
                phys: 0x2_0003,
                ..
            })
        ));

        // NUL just before unreadable memory, mid-chunk: byte fallback finds it.
        let mut m = pvh_mem(b"", &qemu_map());
        m.put(0x6000, &pvh_header(1, 0x2_0005, 0, 0x8000, 8));
        m.put(0x2_0000, b"xxxxxhi\xff\0");
        assert_eq!(parse_pvh(&m, 0x6000).unwrap().cmdline, "hi\u{fffd}");
    }

    /// Builds a multiboot2 info block tag by tag, 8-byte aligned, like GRUB.
    struct Mb2 {
        buf: Vec<u8>,
    }

    impl Mb2 {
        fn new() -> Mb2 {
            Mb2 { buf: vec![0; 8] }
        }
        fn tag(mut self, ty: u32, body: &[u8]) -> Mb2 {
            self.buf.extend_from_slice(&ty.to_le_bytes());
            self.buf
                .extend_from_slice(&(8 + body.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(body);
            while !self.buf.len().is_multiple_of(8) {
                self.buf.push(0);
            }
            self
        }
        fn string(self, ty: u32, s: &str) -> Mb2 {
            let mut b = s.as_bytes().to_vec();
            b.push(0);
            self.tag(ty, &b)
        }
        fn mmap(self, map: &[(u64, u64, u32)]) -> Mb2 {
            let mut b = Vec::new();
            b.extend_from_slice(&24u32.to_le_bytes());
            b.extend_from_slice(&0u32.to_le_bytes());
            for &(base, len, ty) in map {
                b.extend_from_slice(&entry(base, len, ty));
            }
            self.tag(6, &b)
        }
        fn end(self) -> Vec<u8> {
            let mut v = self.tag(0, &[]).buf;
            let n = v.len() as u32;
            v[..4].copy_from_slice(&n.to_le_bytes());
            v
        }
    }

    fn fb_body(addr: u64, pitch: u32, w: u32, h: u32, bpp: u8, ty: u8, color: [u8; 6]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&addr.to_le_bytes());
        for v in [pitch, w, h] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&[bpp, ty, 0, 0]);
        b.extend_from_slice(&color);
        b
    }

    fn rsdp_body(v2: bool) -> Vec<u8> {
        let mut b = b"RSD PTR ".to_vec();
        b.resize(if v2 { 36 } else { 20 }, 0);
        b[15] = if v2 { 2 } else { 0 };
        b
    }

    /// Roughly what GRUB 2.06 hands over on a BIOS boot with a framebuffer.
    fn grub_blob() -> Vec<u8> {
        Mb2::new()
            .string(1, "log=warn,usb=trace banner=\"hi there\"")
            .string(2, "GRUB 2.06-13+deb12u1")
            .tag(10, &[0; 20]) // APM
            .tag(4, &[0x80, 2, 0, 0, 0, 0xfb, 1, 0]) // basic meminfo
            .tag(5, &[0xff; 12]) // boot device
            .mmap(&qemu_map())
            .tag(9, &[0; 20]) // ELF sections (truncated, skipped anyway)
            .tag(
                8,
                &fb_body(0xfd00_0000, 4096, 1024, 768, 32, 1, [16, 8, 8, 8, 0, 8]),
            )
            .tag(14, &rsdp_body(false))
            .tag(15, &rsdp_body(true))
            .end()
    }

    fn mb2_mem(blob: &[u8]) -> FakeMem {
        let mut m = FakeMem::default();
        m.put(0x10_000, blob);
        m
    }

    /// Offset of the first tag of type `ty` in a blob.
    fn tag_offset(blob: &[u8], ty: u32) -> usize {
        let mut off = 8;
        while u32_at(blob, off) != ty {
            off = (off + u32_at(blob, off + 4) as usize + 7) & !7;
        }
        off
    }

    #[test]
    fn multiboot2_as_grub_lays_it_out() {
        let blob = grub_blob();
        let m = mb2_mem(&blob);
        let bi = parse_multiboot2(&m, 0x10_000).unwrap();
        assert_eq!(bi.loader, Loader::Multiboot2);
        assert_eq!(bi.cmdline, "log=warn,usb=trace banner=\"hi there\"");
        assert_eq!(bi.bootloader_name.as_deref(), Some("GRUB 2.06-13+deb12u1"));
        assert_eq!(bi.memory_map.len(), 8);
        assert_eq!(bi.usable_ranges(), vec![0..0x9f000, 0x10_0000..0x7fe_0000]);
        let fb = bi.framebuffer.unwrap();
        assert_eq!(
            (fb.addr, fb.pitch, fb.width, fb.height, fb.bpp),
            (0xfd00_0000, 4096, 1024, 768, 32)
        );
        assert_eq!(fb.red, ColorField { shift: 16, bits: 8 });
        assert_eq!(fb.blue, ColorField { shift: 0, bits: 8 });
        assert_eq!(fb.size_bytes(), 4096 * 768);
        // The RSDP is the v2 copy inside tag 15, even though tag 14 comes first.
        let want = 0x10_000 + tag_offset(&blob, 15) as u64 + 8;
        assert_eq!(bi.rsdp, Some(want));
        let mut sig = [0u8; 8];
        m.read(want, &mut sig).unwrap();
        assert_eq!(&sig, b"RSD PTR ");
        assert_eq!(
            parse_entry(&m, MULTIBOOT2_LOADER_MAGIC, 0x10_000).unwrap(),
            bi
        );
    }

    #[test]
    fn multiboot2_minimal_and_rsdp_v1_only() {
        let blob = Mb2::new()
            .tag(14, &rsdp_body(false))
            .mmap(&[(0x10_0000, 0x10_0000, 1)])
            .end();
        let bi = parse_multiboot2(&mb2_mem(&blob), 0x10_000).unwrap();
        assert_eq!(bi.cmdline, "");
        assert_eq!(bi.bootloader_name, None);
        assert_eq!(bi.framebuffer, None);
        assert_eq!(bi.rsdp, Some(0x10_000 + 8 + 8));
        assert_eq!(bi.usable_bytes(), 0x10_0000);
    }

    #[test]
    fn multiboot2_header_errors() {
        assert!(matches!(
            parse_multiboot2(&FakeMem::default(), 0x10_000),
            Err(BootInfoError::Unreadable {
                what: "multiboot2 info header",
                ..
            })
        ));
        for total in [0u32, 7, MAX_MULTIBOOT2_SIZE + 1, u32::MAX] {
            let mut blob = grub_blob();
            blob[..4].copy_from_slice(&total.to_le_bytes());
            let e = parse_multiboot2(&mb2_mem(&blob), 0x10_000).unwrap_err();
            assert_eq!(
                e,
                BootInfoError::TotalSize {
                    phys: 0x10_000,
                    value: total
                }
            );
            assert!(e.to_string().contains(&total.to_string()));
        }
        // total_size 8: no room for any tag, so no end tag.
        let mut blob = grub_blob();
        blob[..4].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(
            parse_multiboot2(&mb2_mem(&blob), 0x10_000),
            Err(BootInfoError::MissingEndTag { total_size: 8 })
        );
        // total_size larger than the readable blob.
        let mut blob = grub_blob();
        let n = blob.len() as u32;
        blob.truncate(blob.len() - 8); // drop the end tag
        blob[..4].copy_from_slice(&n.to_le_bytes());
        assert!(matches!(
            parse_multiboot2(&mb2_mem(&blob), 0x10_000),
            Err(BootInfoError::Unreadable {
                what: "multiboot2 tag header",
                ..
            })
        ));
        // End tag missing but total_size consistent with what is there.
        let mut blob = grub_blob();
        blob.truncate(blob.len() - 8);
        let n = blob.len() as u32;
        blob[..4].copy_from_slice(&n.to_le_bytes());
        assert_eq!(
            parse_multiboot2(&mb2_mem(&blob), 0x10_000),
            Err(BootInfoError::MissingEndTag { total_size: n })
        );
        // Wrapping the address space.
        let mut m = FakeMem::default();
        m.put(u64::MAX - 15, &[0xff, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(
            parse_multiboot2(&m, u64::MAX - 15),
            Err(BootInfoError::AddressOverflow { .. })
        ));
    }

    #[test]
    fn multiboot2_tag_size_errors() {
        let blob = grub_blob();
        let name = tag_offset(&blob, 2);
        for (size, want_past) in [
            (0u32, false),
            (7, false),
            (blob.len() as u32, true),
            (u32::MAX, true),
        ] {
            let mut b = blob.clone();
            b[name + 4..name + 8].copy_from_slice(&size.to_le_bytes());
            let e = parse_multiboot2(&mb2_mem(&b), 0x10_000).unwrap_err();
            if want_past {
                assert!(
                    matches!(e, BootInfoError::TagPastEnd { tag_type: 2, .. }),
                    "{e}"
                );
            } else {
                assert!(
                    matches!(
                        e,
                        BootInfoError::TagTooSmall {
                            tag_type: 2,
                            min: 8,
                            ..
                        }
                    ),
                    "{e}"
                );
            }
            assert!(e.to_string().contains(&std::format!("{:#x}", name)));
        }
        // Too-small tags of each kind we decode.
        for (ty, body, min) in [
            (6u32, vec![24, 0, 0, 0], 16u32),
            (8, vec![0; 10], 30),
            (
                8,
                fb_body(0xfd00_0000, 4096, 1024, 768, 32, 1, [0; 6])[..24].to_vec(),
                38,
            ),
            (14, b"RSD PTR ".to_vec(), 28),
            (15, rsdp_body(false), 44),
        ] {
            let b = Mb2::new().tag(ty, &body).mmap(&qemu_map()).end();
            assert!(
                matches!(
                    parse_multiboot2(&mb2_mem(&b), 0x10_000),
                    Err(BootInfoError::TagTooSmall { tag_type, min: m, .. }) if tag_type == ty && m == min
                ),
                "type {ty}"
            );
        }
    }

    #[test]
    fn multiboot2_memory_map_limits() {
        // entry_size below 24.
        let mut body = 16u32.to_le_bytes().to_vec();
        body.extend_from_slice(&[0; 4 + 32]);
        let b = Mb2::new().tag(6, &body).end();
        assert!(matches!(
            parse_multiboot2(&mb2_mem(&b), 0x10_000),
            Err(BootInfoError::EntrySize { value: 16, .. })
        ));
        // Bigger entries (future versions) are walked by entry_size; trailing partial entry ignored.
        let mut body = 32u32.to_le_bytes().to_vec();
        body.extend_from_slice(&0u32.to_le_bytes());
        for (i, e) in [(0x10_0000u64, 0x2000u64, 1u32), (0x20_0000, 0x1000, 3)]
            .iter()
            .enumerate()
        {
            body.extend_from_slice(&entry(e.0, e.1, e.2));
            body.extend_from_slice(&[i as u8; 8]);
        }
        body.extend_from_slice(&[0xee; 20]);
        let b = Mb2::new().tag(6, &body).end();
        let bi = parse_multiboot2(&mb2_mem(&b), 0x10_000).unwrap();
        assert_eq!(bi.memory_map.len(), 2);
        assert_eq!(bi.memory_map[1].kind, RegionKind::AcpiReclaimable);
        // Too many entries.
        let map: Vec<_> = (0..MAX_MEMMAP_ENTRIES as u64 + 1)
            .map(|i| (i << 12, 0x1000, 1))
            .collect();
        let b = Mb2::new().mmap(&map).end();
        assert!(matches!(
            parse_multiboot2(&mb2_mem(&b), 0x10_000),
            Err(BootInfoError::TooManyEntries { count: 4097, .. })
        ));
        // Exactly the limit is fine and merges into one range.
        let b = Mb2::new().mmap(&map[..MAX_MEMMAP_ENTRIES]).end();
        let bi = parse_multiboot2(&mb2_mem(&b), 0x10_000).unwrap();
        assert_eq!(
            bi.usable_ranges(),
            vec![0..(MAX_MEMMAP_ENTRIES as u64) << 12]
        );
        // No memory map, or an empty one.
        for b in [Mb2::new().string(1, "x").end(), Mb2::new().mmap(&[]).end()] {
            assert_eq!(
                parse_multiboot2(&mb2_mem(&b), 0x10_000),
                Err(BootInfoError::NoMemoryMap {
                    loader: Loader::Multiboot2
                })
            );
        }
    }

    #[test]
    fn multiboot2_strings() {
        let ok = "a".repeat(MAX_CMDLINE);
        let b = Mb2::new().string(1, &ok).mmap(&qemu_map()).end();
        assert_eq!(
            parse_multiboot2(&mb2_mem(&b), 0x10_000).unwrap().cmdline,
            ok
        );
        let long = "a".repeat(MAX_CMDLINE + 1);
        let b = Mb2::new().string(1, &long).mmap(&qemu_map()).end();
        assert!(matches!(
            parse_multiboot2(&mb2_mem(&b), 0x10_000),
            Err(BootInfoError::StringTooLong {
                what: "multiboot2 cmdline",
                ..
            })
        ));
        // No NUL: the whole body; invalid UTF-8 replaced; empty body.
        let b = Mb2::new()
            .tag(1, b"no-nul")
            .tag(2, b"G\xffRUB\0junk")
            .mmap(&qemu_map())
            .end();
        let bi = parse_multiboot2(&mb2_mem(&b), 0x10_000).unwrap();
        assert_eq!(bi.cmdline, "no-nul");
        assert_eq!(bi.bootloader_name.as_deref(), Some("G\u{fffd}RUB"));
        let b = Mb2::new().tag(2, b"").mmap(&qemu_map()).end();
        assert_eq!(
            parse_multiboot2(&mb2_mem(&b), 0x10_000)
                .unwrap()
                .bootloader_name
                .as_deref(),
            Some("")
        );
        // Repeated tags: last wins.
        let b = Mb2::new()
            .string(1, "first")
            .string(1, "second")
            .mmap(&qemu_map())
            .end();
        assert_eq!(
            parse_multiboot2(&mb2_mem(&b), 0x10_000).unwrap().cmdline,
            "second"
        );
    }

    #[test]
    fn multiboot2_framebuffer_and_rsdp_checks() {
        let good = [16, 8, 8, 8, 0, 8];
        let parse_fb = |body: Vec<u8>| {
            let b = Mb2::new().tag(8, &body).mmap(&qemu_map()).end();
            parse_multiboot2(&mb2_mem(&b), 0x10_000).map(|bi| bi.framebuffer)
        };
        // Indexed (0) and EGA text (2) are not reported, even without colour info.
        assert_eq!(
            parse_fb(fb_body(0xb8000, 160, 80, 25, 16, 2, good)[..22].to_vec()),
            Ok(None)
        );
        assert_eq!(
            parse_fb(fb_body(0xa0000, 320, 320, 200, 8, 0, good)),
            Ok(None)
        );
        // 16-bit 5:6:5 and 24-bit packed are fine.
        let fb = parse_fb(fb_body(
            0xe000_0000,
            1600,
            800,
            600,
            16,
            1,
            [11, 5, 5, 6, 0, 5],
        ))
        .unwrap()
        .unwrap();
        assert_eq!(fb.green, ColorField { shift: 5, bits: 6 });
        assert!(parse_fb(fb_body(0xe000_0000, 2400, 800, 600, 24, 1, good))
            .unwrap()
            .is_some());
        for body in [
            fb_body(0, 4096, 1024, 768, 32, 1, good),
            fb_body(0xe000_0000, 4096, 0, 768, 32, 1, good),
            fb_body(0xe000_0000, 4096, 1024, 0, 32, 1, good),
            fb_body(0xe000_0000, 4096, 1024, 768, 0, 1, good),
            fb_body(0xe000_0000, 4096, 1024, 768, 64, 1, good),
            fb_body(0xe000_0000, 4095, 1024, 768, 32, 1, good),
            fb_body(u64::MAX - 4096, 4096, 1024, 768, 32, 1, good),
            fb_body(0xe000_0000, 4096, 1024, 768, 32, 1, [16, 8, 8, 0, 0, 8]),
            fb_body(0xe000_0000, 4096, 1024, 768, 32, 1, [30, 8, 8, 8, 0, 8]),
            fb_body(0xe000_0000, 4096, 1024, 768, 32, 1, [255, 255, 8, 8, 0, 8]),
        ] {
            let e = parse_fb(body).unwrap_err();
            assert!(matches!(e, BootInfoError::BadFramebuffer { .. }), "{e}");
            assert!(e.to_string().contains("framebuffer"));
        }
        let mut bad = rsdp_body(true);
        bad[0] = b'X';
        let b = Mb2::new().tag(15, &bad).mmap(&qemu_map()).end();
        assert_eq!(
            parse_multiboot2(&mb2_mem(&b), 0x10_000),
            Err(BootInfoError::BadRsdp {
                offset: 8,
                tag_type: 15
            })
        );
    }

    fn region(start: u64, len: u64, kind: RegionKind) -> MemoryRegion {
        MemoryRegion { start, len, kind }
    }

    fn with_map(map: Vec<MemoryRegion>) -> BootInfo {
        BootInfo {
            loader: Loader::Pvh,
            memory_map: map,
            rsdp: None,
            cmdline: String::new(),
            bootloader_name: None,
            framebuffer: None,
        }
    }

    #[test]
    fn usable_ranges_merges_overlaps_and_removes_reserved() {
        use RegionKind::*;
        let bi = with_map(vec![
            // Unsorted, overlapping, touching, unaligned.
            region(0x30_0000, 0x10_0000, Usable),
            region(0x10_0800, 0x10_0000, Usable),
            region(0x20_0800, 0x10_0000, Usable), // touches the one above
            region(0x25_0000, 0x10, Reserved),    // punches a hole, page-rounded outward
            region(0x38_0000, 0x1_0000, Unknown(12)),
            region(0x50_0000, 0, Usable),     // empty
            region(0x60_0000, 0x800, Usable), // smaller than a page after rounding
            region(0x70_0000, 0x1_0000, Bad),
            region(0x70_0000, 0x2_0000, Usable), // half of it is also bad
            region(0x80_0000, 0x1_0000, AcpiNvs),
            region(0x80_0000, 0x1_0000, Usable), // entirely NVS
        ]);
        assert_eq!(
            bi.usable_ranges(),
            vec![
                0x10_1000..0x25_0000,
                0x25_1000..0x38_0000,
                0x39_0000..0x40_0000,
                0x71_0000..0x72_0000,
            ]
        );
        let r = bi.usable_ranges();
        for w in r.windows(2) {
            assert!(w[0].end < w[1].start);
        }
    }

    #[test]
    fn usable_ranges_at_the_top_of_the_address_space() {
        use RegionKind::*;
        let bi = with_map(vec![
            region(u64::MAX - 0x1_0000, u64::MAX, Usable), // wraps: clamped
            region(u64::MAX - 10, 5, Usable),
            region(0, u64::MAX, Reserved),
            region(0x1000, 0x1000, Usable),
        ]);
        assert_eq!(bi.usable_ranges(), vec![]);
        let bi = with_map(vec![region(u64::MAX - 0x2_0fff, u64::MAX, Usable)]);
        assert_eq!(
            bi.usable_ranges(),
            vec![(u64::MAX - 0x2_0fff)..(u64::MAX - 0xfff)]
        );
        let bi = with_map(vec![region(u64::MAX - 0x800, 0x100, Usable)]);
        assert_eq!(bi.usable_ranges(), vec![]);
        assert_eq!(with_map(vec![]).usable_bytes(), 0);
    }

    #[test]
    fn usable_ranges_matches_a_bitmap_model() {
        // Small address space (64 pages of 4 KiB) so a page bitmap is a trivially correct model.
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        for _ in 0..500 {
            let mut map = Vec::new();
            for _ in 0..rng.below(12) {
                let start = rng.below(64 * 4096);
                let len = rng.below(16 * 4096);
                let kind = RegionKind::from_e820(if rng.below(3) == 0 { 2 } else { 1 });
                map.push(region(start, len, kind));
            }
            let bi = with_map(map.clone());
            let mut byte_ok = vec![false; 80 * 4096];
            for r in map.iter().filter(|r| r.kind == RegionKind::Usable) {
                for b in r.range() {
                    byte_ok[b as usize] = true;
                }
            }
            for r in map.iter().filter(|r| r.kind != RegionKind::Usable) {
                for b in r.range() {
                    byte_ok[b as usize] = false;
                }
            }
            let mut want: Vec<Range<u64>> = Vec::new();
            for page in 0..80u64 {
                let p = page as usize * 4096;
                if byte_ok[p..p + 4096].iter().all(|&x| x) {
                    match want.last_mut() {
                        Some(r) if r.end == page * 4096 => r.end += 4096,
                        _ => want.push(page * 4096..(page + 1) * 4096),
                    }
                }
            }
            assert_eq!(bi.usable_ranges(), want, "{map:?}");
        }
    }

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn fuzz_random_bytes_never_panic() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let grub = grub_blob();
        let pvh = pvh_mem(b"log=info", &qemu_map());
        for iter in 0..3000 {
            // Half the time mutate a valid blob (reaches deep paths), else pure noise.
            let mut blob = if iter % 2 == 0 {
                grub.clone()
            } else {
                (0..rng.below(512)).map(|_| rng.next() as u8).collect()
            };
            if iter % 2 == 0 {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(blob.len() as u64) as usize;
                    blob[i] = rng.next() as u8;
                }
                if rng.below(4) == 0 {
                    blob.truncate(rng.below(blob.len() as u64) as usize);
                }
            } else if blob.len() >= 8 && rng.below(2) == 0 {
                // Plausible total_size and first tag so the tag walker gets exercised.
                let n = blob.len() as u32;
                blob[..4].copy_from_slice(&n.to_le_bytes());
            }
            let m = mb2_mem(&blob);
            let _ = parse_multiboot2(&m, 0x10_000).map(|bi| bi.usable_ranges());
            let _ = parse_entry(&m, MULTIBOOT2_LOADER_MAGIC, 0x10_000);

            // PVH: random header fields pointing at random (often unreadable) places.
            let mut m = FakeMem::default();
            for (base, bytes) in &pvh.regions {
                let mut b = bytes.clone();
                for _ in 0..rng.below(4) {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] = rng.next() as u8;
                }
                m.put(*base, &b);
            }
            if rng.below(3) == 0 {
                let mut h = pvh_header(
                    rng.below(3) as u32,
                    [0, 0x2_0000, rng.next()][rng.below(3) as usize],
                    rng.next(),
                    [0x8000, rng.next(), u64::MAX - rng.below(100)][rng.below(3) as usize],
                    rng.below(5000) as u32,
                );
                h.truncate(rng.below(64) as usize);
                m.put(0x6000, &h);
            }
            let _ = parse_pvh(&m, 0x6000).map(|bi| bi.usable_ranges());
            let _ = parse_entry(&m, rng.next() as u32, 0x6000);
            let _ = parse_entry(&m, 0, rng.next());
        }
    }
}
