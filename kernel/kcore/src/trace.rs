//! The circular trace buffer.
//!
//! Records are fixed size and the ring is allocated once, so tracing never allocates: `push`
//! formats its arguments straight into the slot it overwrites. When full, the oldest record is
//! overwritten and counted. Every record gets a sequence number so an incremental reader can ask
//! for everything `since` the last one it saw and notice (by a gap) what it missed.

use crate::level::Level;
use alloc::vec::Vec;
use core::fmt::{self, Write};

/// Bytes kept of a thread name or subsystem.
pub const NAME_BYTES: usize = 16;
/// Bytes kept of a message, including the cut marker when it is too long.
pub const MESSAGE_BYTES: usize = 160;
/// Replaces the tail of a message that did not fit.
pub const CUT_MARKER: &str = "[...]";

/// A UTF-8 string of at most `N` bytes, stored inline.
#[derive(Clone, Copy)]
struct InlineStr<const N: usize> {
    bytes: [u8; N],
    len: u8,
    /// More text was offered than fit.
    overflowed: bool,
}

impl<const N: usize> InlineStr<N> {
    const EMPTY: Self = InlineStr {
        bytes: [0; N],
        len: 0,
        overflowed: false,
    };

    fn clear(&mut self) {
        self.len = 0;
        self.overflowed = false;
    }

    fn as_str(&self) -> &str {
        // Only whole characters are ever stored, so this cannot fail.
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }

    /// Cuts the content to at most `max` bytes on a character boundary.
    fn truncate(&mut self, max: usize) {
        let text = self.as_str();
        let mut end = max.min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        self.len = end as u8;
    }

    fn set(&mut self, text: &str) {
        self.clear();
        // Cannot fail: the writer drops what does not fit.
        let _ = self.write_str(text);
    }
}

impl<const N: usize> Write for InlineStr<N> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let len = usize::from(self.len);
        let room = N - len;
        if text.len() <= room {
            self.bytes[len..len + text.len()].copy_from_slice(text.as_bytes());
            self.len += text.len() as u8;
            return Ok(());
        }
        let mut take = room;
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        self.bytes[len..len + take].copy_from_slice(&text.as_bytes()[..take]);
        self.len += take as u8;
        self.overflowed = true;
        // Stop formatting early: the rest would be thrown away anyway.
        Err(fmt::Error)
    }
}

/// One trace record.
#[derive(Clone, Copy)]
pub struct Record {
    seq: u64,
    time_ns: u64,
    thread_id: u32,
    cpu: u16,
    level: Level,
    thread_name: InlineStr<NAME_BYTES>,
    subsystem: InlineStr<NAME_BYTES>,
    message: InlineStr<MESSAGE_BYTES>,
}

impl Record {
    const EMPTY: Record = Record {
        seq: 0,
        time_ns: 0,
        thread_id: 0,
        cpu: 0,
        level: Level::Trace,
        thread_name: InlineStr::EMPTY,
        subsystem: InlineStr::EMPTY,
        message: InlineStr::EMPTY,
    };

    pub fn seq(&self) -> u64 {
        self.seq
    }
    pub fn time_ns(&self) -> u64 {
        self.time_ns
    }
    pub fn cpu(&self) -> u16 {
        self.cpu
    }
    pub fn thread_id(&self) -> u32 {
        self.thread_id
    }
    /// At most [`NAME_BYTES`] bytes of the thread name.
    pub fn thread_name(&self) -> &str {
        self.thread_name.as_str()
    }
    pub fn level(&self) -> Level {
        self.level
    }
    /// At most [`NAME_BYTES`] bytes of the subsystem.
    pub fn subsystem(&self) -> &str {
        self.subsystem.as_str()
    }
    /// The message; ends in [`CUT_MARKER`] when it was cut.
    pub fn message(&self) -> &str {
        self.message.as_str()
    }
    pub fn message_was_cut(&self) -> bool {
        self.message.overflowed
    }

    /// `[    12.345678] cpu1 usb1-2           INFO  usb: message`, with no line terminator (the
    /// sink picks `\n` or `\r\n`). Without a subsystem the `usb: ` part is left out.
    pub fn write_line(&self, w: &mut impl Write) -> fmt::Result {
        let seconds = self.time_ns / 1_000_000_000;
        let micros = self.time_ns % 1_000_000_000 / 1_000;
        write!(
            w,
            "[{seconds:>5}.{micros:06}] cpu{} {:<width$} {} ",
            self.cpu,
            self.thread_name(),
            self.level.tag(),
            width = NAME_BYTES
        )?;
        if !self.subsystem().is_empty() {
            write!(w, "{}: ", self.subsystem())?;
        }
        w.write_str(self.message())
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_line(f)
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("seq", &self.seq)
            .field("time_ns", &self.time_ns)
            .field("cpu", &self.cpu)
            .field("thread_id", &self.thread_id)
            .field("thread_name", &self.thread_name())
            .field("level", &self.level)
            .field("subsystem", &self.subsystem())
            .field("message", &self.message())
            .finish()
    }
}

/// A fixed-capacity ring of [`Record`]s, oldest overwritten first.
pub struct TraceRing {
    slots: Vec<Record>,
    /// Slot the next record goes into.
    head: usize,
    len: usize,
    next_seq: u64,
    overwritten: u64,
}

impl TraceRing {
    /// Allocates all `capacity` records now (at least one). Each is ~220 bytes.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let mut slots = Vec::with_capacity(capacity);
        slots.resize(capacity, Record::EMPTY);
        TraceRing {
            slots,
            head: 0,
            len: 0,
            next_seq: 0,
            overwritten: 0,
        }
    }

    /// Appends a record, overwriting the oldest when full, and returns its sequence number
    /// (0, 1, 2, ...). Names are cut to [`NAME_BYTES`]; a message longer than
    /// [`MESSAGE_BYTES`] is cut and ends in [`CUT_MARKER`].
    #[allow(clippy::too_many_arguments)] // one call per trace site; a struct would just be noise
    pub fn push(
        &mut self,
        time_ns: u64,
        cpu: u16,
        thread_id: u32,
        thread_name: &str,
        level: Level,
        subsystem: &str,
        args: fmt::Arguments<'_>,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.len == self.slots.len() {
            self.overwritten += 1;
        } else {
            self.len += 1;
        }
        let slot = self.head;
        self.head = (self.head + 1) % self.slots.len();
        let record = &mut self.slots[slot];

        record.seq = seq;
        record.time_ns = time_ns;
        record.cpu = cpu;
        record.thread_id = thread_id;
        record.level = level;
        record.thread_name.set(thread_name);
        record.subsystem.set(subsystem);
        record.message.clear();
        // An error only means the message overflowed (or a Display impl failed); keep what came.
        let _ = record.message.write_fmt(args);
        if record.message.overflowed {
            record.message.truncate(MESSAGE_BYTES - CUT_MARKER.len());
            let _ = record.message.write_str(CUT_MARKER);
            record.message.overflowed = true;
        }
        seq
    }

    /// Oldest to newest.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Record> + '_ {
        self.newest(self.len)
    }

    /// Records with `seq >= seq`, oldest first. A reader that last saw `n` asks for `n + 1`; if
    /// the first record returned has a larger seq, the difference was overwritten unseen.
    pub fn since(&self, seq: u64) -> impl DoubleEndedIterator<Item = &Record> + '_ {
        let skip = seq.saturating_sub(self.oldest_seq()).min(self.len as u64) as usize;
        self.newest(self.len - skip)
    }

    /// The newest `count` records (`count <= len`), oldest first, as at most two slices.
    fn newest(&self, count: usize) -> impl DoubleEndedIterator<Item = &Record> + '_ {
        let capacity = self.slots.len();
        let start = (self.head + capacity - count) % capacity;
        let first_len = (capacity - start).min(count);
        self.slots[start..start + first_len]
            .iter()
            .chain(self.slots[..count - first_len].iter())
    }

    /// Seq of the oldest record still held (equal to [`next_seq`](Self::next_seq) when empty).
    pub fn oldest_seq(&self) -> u64 {
        self.next_seq - self.len as u64
    }

    /// Seq the next `push` will return.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Records lost to wraparound.
    pub fn overwritten(&self) -> u64 {
        self.overwritten
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::String;
    use std::vec::Vec;

    fn push(ring: &mut TraceRing, n: u64) -> u64 {
        ring.push(
            n * 1000,
            0,
            1,
            "main",
            Level::Info,
            "test",
            format_args!("message {n}"),
        )
    }

    fn messages(
        records: impl Iterator<Item = impl core::ops::Deref<Target = Record>>,
    ) -> Vec<String> {
        records.map(|r| String::from(r.message())).collect()
    }

    #[test]
    fn records_come_back_oldest_first_before_wrapping() {
        let mut ring = TraceRing::new(4);
        assert!(ring.is_empty());
        assert_eq!(ring.iter().count(), 0);
        for n in 0..3 {
            assert_eq!(push(&mut ring, n), n);
        }
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.overwritten(), 0);
        assert_eq!(
            messages(ring.iter()),
            ["message 0", "message 1", "message 2"]
        );
    }

    #[test]
    fn wraparound_overwrites_oldest_and_counts_it() {
        let mut ring = TraceRing::new(4);
        for n in 0..10 {
            push(&mut ring, n);
        }
        assert_eq!(ring.len(), 4);
        assert_eq!(ring.capacity(), 4);
        assert_eq!(ring.overwritten(), 6);
        assert_eq!(ring.oldest_seq(), 6);
        assert_eq!(ring.next_seq(), 10);
        let seqs: Vec<u64> = ring.iter().map(Record::seq).collect();
        assert_eq!(seqs, [6, 7, 8, 9]);
        assert_eq!(
            messages(ring.iter()),
            ["message 6", "message 7", "message 8", "message 9"]
        );
        // Exactly full, head back at slot 0.
        let mut exact = TraceRing::new(3);
        for n in 0..6 {
            push(&mut exact, n);
        }
        let seqs: Vec<u64> = exact.iter().map(Record::seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
    }

    #[test]
    fn since_serves_incremental_readers() {
        let mut ring = TraceRing::new(5);
        for n in 0..3 {
            push(&mut ring, n);
        }
        let seen: Vec<u64> = ring.since(0).map(Record::seq).collect();
        assert_eq!(seen, [0, 1, 2]);
        let last = *seen.last().unwrap();
        for n in 3..9 {
            push(&mut ring, n);
        }
        // 0..=3 are gone; the reader sees 4.. and can tell it missed 3.
        let next: Vec<u64> = ring.since(last + 1).map(Record::seq).collect();
        assert_eq!(next, [4, 5, 6, 7, 8]);
        assert_eq!(ring.since(7).map(Record::seq).collect::<Vec<_>>(), [7, 8]);
        assert_eq!(ring.since(9).count(), 0);
        assert_eq!(ring.since(u64::MAX).count(), 0);
    }

    #[test]
    fn capacity_zero_means_one() {
        let mut ring = TraceRing::new(0);
        push(&mut ring, 0);
        push(&mut ring, 1);
        assert_eq!(ring.capacity(), 1);
        assert_eq!(messages(ring.iter()), ["message 1"]);
        assert_eq!(ring.overwritten(), 1);
    }

    #[test]
    fn long_message_is_cut_with_marker_on_a_char_boundary() {
        let mut ring = TraceRing::new(2);
        let long = "x".repeat(300);
        ring.push(0, 0, 0, "t", Level::Warn, "s", format_args!("{long}"));
        let record = ring.iter().next().unwrap();
        assert_eq!(record.message().len(), MESSAGE_BYTES);
        assert!(record.message().ends_with(CUT_MARKER));
        assert!(record.message_was_cut());
        // Multi-byte characters straddling the cut point are dropped whole.
        let wide = "é".repeat(100); // 200 bytes
        ring.push(0, 0, 0, "t", Level::Warn, "s", format_args!("a{wide}"));
        let record = ring.iter().last().unwrap();
        assert!(record.message().ends_with(CUT_MARKER));
        assert!(record.message().len() <= MESSAGE_BYTES);
        assert!(record.message().starts_with("aé"));
        // Exactly the limit is not cut.
        let exact = "y".repeat(MESSAGE_BYTES);
        ring.push(0, 0, 0, "t", Level::Warn, "s", format_args!("{exact}"));
        let record = ring.iter().last().unwrap();
        assert_eq!(record.message(), exact);
        assert!(!record.message_was_cut());
    }

    #[test]
    fn overwritten_slot_forgets_the_old_cut_flag_and_names() {
        let mut ring = TraceRing::new(1);
        let long = "z".repeat(400);
        ring.push(
            0,
            0,
            0,
            "a-very-long-thread-name",
            Level::Error,
            "subsystem-name-long",
            format_args!("{long}"),
        );
        assert_eq!(
            ring.iter().next().unwrap().thread_name(),
            "a-very-long-thre"
        );
        assert_eq!(ring.iter().next().unwrap().subsystem(), "subsystem-name-l");
        ring.push(0, 0, 0, "b", Level::Error, "", format_args!("short"));
        let record = ring.iter().next().unwrap();
        assert_eq!(record.message(), "short");
        assert!(!record.message_was_cut());
        assert_eq!(record.thread_name(), "b");
        assert_eq!(record.subsystem(), "");
    }

    #[test]
    fn line_format_matches_the_console() {
        let mut ring = TraceRing::new(4);
        ring.push(
            12_345_678_901,
            1,
            42,
            "usb1-2",
            Level::Info,
            "usb",
            format_args!("port {} enabled", 2),
        );
        ring.push(
            5_000,
            0,
            1,
            "idle",
            Level::Error,
            "",
            format_args!("no subsystem"),
        );
        ring.push(
            123_456_000_000_000,
            12,
            1,
            "longer-than-sixteen",
            Level::Debug,
            "net",
            format_args!("x"),
        );
        let lines: Vec<String> = ring.iter().map(|r| std::format!("{r}")).collect();
        assert_eq!(
            lines[0],
            "[   12.345678] cpu1 usb1-2           INFO  usb: port 2 enabled"
        );
        assert_eq!(
            lines[1],
            "[    0.000005] cpu0 idle             ERROR no subsystem"
        );
        assert_eq!(
            lines[2],
            "[123456.000000] cpu12 longer-than-sixt DEBUG net: x"
        );
        let record = ring.iter().next().unwrap();
        assert_eq!(record.thread_id(), 42);
        assert_eq!(record.cpu(), 1);
        assert_eq!(record.level(), Level::Info);
        assert_eq!(record.time_ns(), 12_345_678_901);
        let mut out = String::new();
        record.write_line(&mut out).unwrap();
        assert_eq!(out, lines[0]);
    }

    #[test]
    fn record_is_small() {
        assert!(core::mem::size_of::<Record>() <= 256);
    }
}
