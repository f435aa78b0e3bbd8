//! Lock-order learning for a WITNESS-style checker.
//!
//! Lock classes are named by static strings; every lock with the same name is one class. Each
//! time a thread takes a lock while holding others, the kernel calls [`LockOrder::on_acquire`],
//! which learns "held before acquiring" for each held class and reports a reversal when the
//! acquiring class is already known to come before (directly or through other classes) one of
//! the held ones.
//!
//! It runs with interrupts off under a spin lock, so it never allocates: all tables are fixed
//! arrays (about 80 KiB, all zero at start so a `static` lands in .bss). The learned graph is
//! kept acyclic: a reversed edge is reported, not learned, so one bad path cannot poison every
//! later check. The fast path (all edges already known) is one bit test per held lock.

use core::fmt;
use core::panic::Location;

/// Most lock classes that can be named.
pub const MAX_CLASSES: usize = 256;
/// Most learned edges whose first-seen sites are kept. Past this the order is still learned and
/// checked; reports just say the sites were not recorded.
pub const MAX_EDGES: usize = 1024;
/// Most steps of a transitive path kept in an [`Inversion`].
pub const MAX_PATH: usize = 8;

const WORDS: usize = MAX_CLASSES / 64;
/// Open-addressing name table, twice the class capacity so probes stay short.
const SLOTS: usize = 2 * MAX_CLASSES;
const UNKNOWN_NAME: &str = "<unknown lock class>";

/// A lock class: index into the name table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ClassId(pub u16);

/// Where a lock was taken.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Site {
    pub file: &'static str,
    pub line: u32,
}

impl Site {
    /// The caller's location; use in `#[track_caller]` lock functions.
    #[track_caller]
    pub fn caller() -> Site {
        Site::from(Location::caller())
    }
}

impl From<&'static Location<'static>> for Site {
    fn from(location: &'static Location<'static>) -> Site {
        Site {
            file: location.file(),
            line: location.line(),
        }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One learned step `from -> to` of an established order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct PathEdge {
    pub from: ClassId,
    pub from_name: &'static str,
    pub to: ClassId,
    pub to_name: &'static str,
    /// Where the order was first seen: (`from` was taken at, `to` was acquired at). `None` when
    /// the edge table was full at the time.
    pub first_seen: Option<(Site, Site)>,
}

const BLANK_EDGE: PathEdge = PathEdge {
    from: ClassId(0),
    from_name: "",
    to: ClassId(0),
    to_name: "",
    first_seen: None,
};

/// A lock-order reversal: `acquiring` was taken while holding `held`, but the established order
/// (the path) says `acquiring` comes before `held`.
#[derive(Clone, Copy, Debug)]
pub struct Inversion {
    held: ClassId,
    held_name: &'static str,
    held_site: Site,
    acquiring: ClassId,
    acquiring_name: &'static str,
    acquiring_site: Site,
    /// Established path acquiring -> ... -> held; first `stored` steps kept.
    path: [PathEdge; MAX_PATH],
    stored: u8,
    path_len: u16,
}

impl Inversion {
    pub fn held(&self) -> ClassId {
        self.held
    }
    pub fn held_name(&self) -> &'static str {
        self.held_name
    }
    /// Where the held lock was taken by this thread.
    pub fn held_site(&self) -> Site {
        self.held_site
    }
    pub fn acquiring(&self) -> ClassId {
        self.acquiring
    }
    pub fn acquiring_name(&self) -> &'static str {
        self.acquiring_name
    }
    /// Where the lock is being taken now.
    pub fn acquiring_site(&self) -> Site {
        self.acquiring_site
    }
    /// The established order acquiring -> ... -> held (at most [`MAX_PATH`] steps; see
    /// [`path_len`](Self::path_len) for the full length).
    pub fn path(&self) -> &[PathEdge] {
        &self.path[..usize::from(self.stored)]
    }
    /// Steps in the full established path; 1 for a direct reversal.
    pub fn path_len(&self) -> usize {
        usize::from(self.path_len)
    }
    pub fn is_transitive(&self) -> bool {
        self.path_len > 1
    }
}

fn write_first_seen(f: &mut fmt::Formatter<'_>, edge: &PathEdge) -> fmt::Result {
    match edge.first_seen {
        Some((held_at, acquired_at)) => write!(f, "first seen at {held_at} / {acquired_at}"),
        None => f.write_str("first seen at <not recorded: edge table full>"),
    }
}

impl fmt::Display for Inversion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "lock order reversal: '{}' ({}) acquired while holding '{}' ({});",
            self.acquiring_name, self.acquiring_site, self.held_name, self.held_site
        )?;
        let path = self.path();
        if let [edge] = path {
            write!(
                f,
                "  established order '{}' -> '{}' ",
                edge.from_name, edge.to_name
            )?;
            return write_first_seen(f, edge);
        }
        write!(f, "  established order '{}'", self.acquiring_name)?;
        for edge in path {
            write!(f, " -> '{}'", edge.to_name)?;
        }
        if self.path_len() > path.len() {
            write!(f, " -> ... -> '{}'", self.held_name)?;
        }
        f.write_str(":")?;
        for edge in path {
            write!(f, "\n    '{}' -> '{}' ", edge.from_name, edge.to_name)?;
            write_first_seen(f, edge)?;
        }
        if self.path_len() > path.len() {
            write!(f, "\n    ... {} more steps", self.path_len() - path.len())?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct EdgeRecord {
    from: u16,
    to: u16,
    held_at: Site,
    acquired_at: Site,
}

type ClassSet = [u64; WORDS];

fn has(set: &ClassSet, index: usize) -> bool {
    set[index / 64] & (1 << (index % 64)) != 0
}

fn insert(set: &mut ClassSet, index: usize) {
    set[index / 64] |= 1 << (index % 64);
}

pub struct LockOrder {
    names: [Option<&'static str>; MAX_CLASSES],
    classes: u16,
    /// Name hash table: class index + 1, 0 = empty.
    slots: [u16; SLOTS],
    /// `after[a]` has bit `b` when "a held while taking b" was learned.
    after: [ClassSet; MAX_CLASSES],
    /// Symmetric: the pair {a, b} has been reported.
    reported: [ClassSet; MAX_CLASSES],
    edges: [Option<EdgeRecord>; MAX_EDGES],
    edge_count: usize,
    unrecorded_edges: u64,
    reports: u64,
}

impl Default for LockOrder {
    fn default() -> Self {
        Self::new()
    }
}

impl LockOrder {
    /// `const` so the kernel can keep it in a `static` spin lock (it is ~80 KiB: avoid building
    /// it on a small stack).
    pub const fn new() -> Self {
        LockOrder {
            names: [None; MAX_CLASSES],
            classes: 0,
            slots: [0; SLOTS],
            after: [[0; WORDS]; MAX_CLASSES],
            reported: [[0; WORDS]; MAX_CLASSES],
            edges: [None; MAX_EDGES],
            edge_count: 0,
            unrecorded_edges: 0,
            reports: 0,
        }
    }

    /// The class for `name`, creating it on first use. `None` when [`MAX_CLASSES`] are taken.
    /// Cache the result per lock: this hashes the name.
    pub fn class(&mut self, name: &'static str) -> Option<ClassId> {
        let mut slot = fnv1a(name) % SLOTS;
        loop {
            match self.slots[slot] {
                0 => break,
                entry => {
                    let index = usize::from(entry - 1);
                    if self.names[index] == Some(name) {
                        return Some(ClassId(entry - 1));
                    }
                }
            }
            slot = (slot + 1) % SLOTS;
        }
        if usize::from(self.classes) == MAX_CLASSES {
            return None;
        }
        let id = self.classes;
        self.names[usize::from(id)] = Some(name);
        self.slots[slot] = id + 1;
        self.classes += 1;
        Some(ClassId(id))
    }

    /// The class's name, or `"<unknown lock class>"` for an id this checker never issued.
    pub fn name(&self, id: ClassId) -> &'static str {
        self.names
            .get(usize::from(id.0))
            .copied()
            .flatten()
            .unwrap_or(UNKNOWN_NAME)
    }

    pub fn class_count(&self) -> usize {
        usize::from(self.classes)
    }

    /// Called before taking `acquiring` at `site`, with `held` the locks this thread holds,
    /// outermost first. Learns held -> acquiring for each held class and returns a reversal if
    /// `acquiring` already (transitively) precedes a held class. Nesting a class inside itself
    /// is ignored; each unordered pair is reported once. If several held classes are reversed,
    /// the outermost is returned and the others are marked reported too (it is one bug).
    /// Unknown class ids are ignored.
    pub fn on_acquire(
        &mut self,
        held: &[(ClassId, Site)],
        acquiring: ClassId,
        site: Site,
    ) -> Option<Inversion> {
        let to = self.index(acquiring)?;
        let mut found = None;
        for &(held_class, held_site) in held {
            let Some(from) = self.index(held_class) else {
                continue;
            };
            if from == to || has(&self.after[from], to) || has(&self.reported[from], to) {
                continue; // the fast path: nothing new
            }
            let mut path = [0u16; MAX_CLASSES];
            match self.find_path(to, from, &mut path) {
                None => self.learn(from, to, held_site, site),
                Some(nodes) => {
                    insert(&mut self.reported[from], to);
                    insert(&mut self.reported[to], from);
                    if found.is_none() {
                        self.reports += 1;
                        found = Some(self.inversion(
                            &path[..nodes],
                            (held_class, held_site),
                            (acquiring, site),
                        ));
                    }
                }
            }
        }
        found
    }

    /// Reversals reported so far.
    pub fn reports(&self) -> u64 {
        self.reports
    }

    /// Whether `a` is known to come before `b`, directly or through other classes.
    pub fn precedes(&self, a: ClassId, b: ClassId) -> bool {
        match (self.index(a), self.index(b)) {
            (Some(a), Some(b)) => {
                let mut path = [0u16; MAX_CLASSES];
                a != b && self.find_path(a, b, &mut path).is_some()
            }
            _ => false,
        }
    }

    /// Direct orders learned.
    pub fn edges_learned(&self) -> u64 {
        self.edge_count as u64 + self.unrecorded_edges
    }

    /// Orders learned after the site table filled up (checked, but reported without sites).
    pub fn edges_unrecorded(&self) -> u64 {
        self.unrecorded_edges
    }

    fn index(&self, id: ClassId) -> Option<usize> {
        (id.0 < self.classes).then_some(usize::from(id.0))
    }

    fn learn(&mut self, from: usize, to: usize, held_at: Site, acquired_at: Site) {
        insert(&mut self.after[from], to);
        if self.edge_count < MAX_EDGES {
            self.edges[self.edge_count] = Some(EdgeRecord {
                from: from as u16,
                to: to as u16,
                held_at,
                acquired_at,
            });
            self.edge_count += 1;
        } else {
            self.unrecorded_edges += 1;
        }
    }

    /// Breadth-first search (shortest path) over learned edges from `start` to `goal`; writes
    /// the nodes start..=goal into `out` and returns how many.
    fn find_path(&self, start: usize, goal: usize, out: &mut [u16; MAX_CLASSES]) -> Option<usize> {
        let mut parent = [u16::MAX; MAX_CLASSES];
        let mut seen: ClassSet = [0; WORDS];
        let mut queue = [0u16; MAX_CLASSES];
        let (mut head, mut tail) = (0, 0);
        queue[tail] = start as u16;
        tail += 1;
        insert(&mut seen, start);
        while head < tail {
            let node = usize::from(queue[head]);
            head += 1;
            if node == goal {
                // Walk parents back to start, then reverse into `out`.
                let mut len = 0;
                let mut at = goal;
                loop {
                    out[len] = at as u16;
                    len += 1;
                    if at == start {
                        break;
                    }
                    at = usize::from(parent[at]);
                }
                out[..len].reverse();
                return Some(len);
            }
            for (word_index, &word) in self.after[node].iter().enumerate() {
                let mut bits = word & !seen[word_index];
                while bits != 0 {
                    let next = word_index * 64 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    insert(&mut seen, next);
                    parent[next] = node as u16;
                    queue[tail] = next as u16;
                    tail += 1;
                }
            }
        }
        None
    }

    fn first_seen(&self, from: usize, to: usize) -> Option<(Site, Site)> {
        self.edges[..self.edge_count]
            .iter()
            .flatten()
            .find(|e| usize::from(e.from) == from && usize::from(e.to) == to)
            .map(|e| (e.held_at, e.acquired_at))
    }

    fn inversion(
        &self,
        nodes: &[u16],
        (held, held_site): (ClassId, Site),
        (acquiring, acquiring_site): (ClassId, Site),
    ) -> Inversion {
        let mut path = [BLANK_EDGE; MAX_PATH];
        let steps = nodes.len() - 1;
        for (slot, pair) in path.iter_mut().zip(nodes.windows(2)) {
            let (from, to) = (usize::from(pair[0]), usize::from(pair[1]));
            *slot = PathEdge {
                from: ClassId(pair[0]),
                from_name: self.name(ClassId(pair[0])),
                to: ClassId(pair[1]),
                to_name: self.name(ClassId(pair[1])),
                first_seen: self.first_seen(from, to),
            };
        }
        Inversion {
            held,
            held_name: self.name(held),
            held_site,
            acquiring,
            acquiring_name: self.name(acquiring),
            acquiring_site,
            path,
            stored: steps.min(MAX_PATH) as u8,
            path_len: steps as u16,
        }
    }
}

fn fnv1a(text: &str) -> usize {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::boxed::Box;
    use std::format;
    use std::string::ToString;

    fn site(line: u32) -> Site {
        Site {
            file: "kernel/src/x.rs",
            line,
        }
    }

    fn checker() -> Box<LockOrder> {
        Box::default()
    }

    #[test]
    fn classes_are_interned_by_name() {
        let mut order = checker();
        let a = order.class("vm.map").unwrap();
        let b = order.class("sched.rq").unwrap();
        assert_ne!(a, b);
        // Same text from a different allocation is the same class.
        let owned: &'static str = Box::leak("vm.map".to_string().into_boxed_str());
        assert_eq!(order.class(owned), Some(a));
        assert_eq!(order.name(a), "vm.map");
        assert_eq!(order.name(b), "sched.rq");
        assert_eq!(order.name(ClassId(200)), "<unknown lock class>");
        assert_eq!(order.class_count(), 2);
    }

    #[test]
    fn capacity_exhaustion_returns_none_and_keeps_existing_classes() {
        let mut order = checker();
        for i in 0..MAX_CLASSES {
            let name: &'static str = Box::leak(format!("class{i}").into_boxed_str());
            assert_eq!(order.class(name), Some(ClassId(i as u16)));
        }
        assert_eq!(order.class("one.too.many"), None);
        assert_eq!(order.class("class7"), Some(ClassId(7)));
        assert_eq!(order.name(ClassId(255)), "class255");
        // Unknown ids are ignored rather than panicking.
        assert!(order
            .on_acquire(&[(ClassId(999), site(1))], ClassId(3), site(2))
            .is_none());
        assert!(order
            .on_acquire(&[(ClassId(3), site(1))], ClassId(999), site(2))
            .is_none());
    }

    #[test]
    fn direct_reversal_names_both_locks_and_sites() {
        let mut order = checker();
        let a = order.class("a").unwrap();
        let b = order.class("b").unwrap();
        assert!(order.on_acquire(&[(a, site(10))], b, site(11)).is_none());
        assert!(order.precedes(a, b));
        assert!(!order.precedes(b, a));
        let inv = order.on_acquire(&[(b, site(20))], a, site(21)).unwrap();
        assert_eq!((inv.held(), inv.acquiring()), (b, a));
        assert_eq!((inv.held_name(), inv.acquiring_name()), ("b", "a"));
        assert_eq!(
            (inv.held_site(), inv.acquiring_site()),
            (site(20), site(21))
        );
        assert!(!inv.is_transitive());
        assert_eq!(inv.path().len(), 1);
        assert_eq!(inv.path()[0].first_seen, Some((site(10), site(11))));
        assert_eq!(
            inv.to_string(),
            "lock order reversal: 'a' (kernel/src/x.rs:21) acquired while holding 'b' \
             (kernel/src/x.rs:20);\n  established order 'a' -> 'b' first seen at \
             kernel/src/x.rs:10 / kernel/src/x.rs:11"
        );
        assert_eq!(order.reports(), 1);
        // The reversed order is not learned.
        assert!(!order.precedes(b, a));
    }

    #[test]
    fn each_pair_is_reported_once() {
        let mut order = checker();
        let a = order.class("a").unwrap();
        let b = order.class("b").unwrap();
        order.on_acquire(&[(a, site(1))], b, site(2));
        assert!(order.on_acquire(&[(b, site(3))], a, site(4)).is_some());
        assert!(order.on_acquire(&[(b, site(5))], a, site(6)).is_none());
        // The known-good order stays quiet too.
        assert!(order.on_acquire(&[(a, site(7))], b, site(8)).is_none());
        assert_eq!(order.reports(), 1);
    }

    #[test]
    fn transitive_reversal_reports_the_path() {
        let mut order = checker();
        let [a, b, c] = ["a", "b", "c"].map(|n| order.class(n).unwrap());
        assert!(order.on_acquire(&[(a, site(1))], b, site(2)).is_none());
        assert!(order.on_acquire(&[(b, site(3))], c, site(4)).is_none());
        assert!(order.precedes(a, c));
        let inv = order.on_acquire(&[(c, site(5))], a, site(6)).unwrap();
        assert!(inv.is_transitive());
        assert_eq!((inv.held_name(), inv.acquiring_name()), ("c", "a"));
        let path = inv.path();
        assert_eq!(path.len(), 2);
        assert_eq!((path[0].from_name, path[0].to_name), ("a", "b"));
        assert_eq!((path[1].from_name, path[1].to_name), ("b", "c"));
        assert_eq!(path[1].first_seen, Some((site(3), site(4))));
        let text = inv.to_string();
        assert!(text.starts_with(
            "lock order reversal: 'a' (kernel/src/x.rs:6) acquired while holding 'c' \
             (kernel/src/x.rs:5);\n  established order 'a' -> 'b' -> 'c':\n"
        ));
        assert!(text.contains("'a' -> 'b' first seen at kernel/src/x.rs:1 / kernel/src/x.rs:2"));
        assert!(text.contains("'b' -> 'c' first seen at kernel/src/x.rs:3 / kernel/src/x.rs:4"));
    }

    #[test]
    fn every_held_lock_orders_before_the_new_one() {
        let mut order = checker();
        let [a, b, c] = ["a", "b", "c"].map(|n| order.class(n).unwrap());
        assert!(order
            .on_acquire(&[(a, site(1)), (b, site(2))], c, site(3))
            .is_none());
        assert!(order.precedes(a, c));
        assert!(order.precedes(b, c));
        assert!(!order.precedes(a, b), "only held -> acquiring is learned");
        // c held, then a: reversal against the outermost known order.
        let inv = order.on_acquire(&[(c, site(4))], a, site(5)).unwrap();
        assert_eq!(inv.path()[0].first_seen, Some((site(1), site(3))));
    }

    #[test]
    fn several_reversed_held_locks_are_one_report() {
        let mut order = checker();
        let [a, b, c] = ["a", "b", "c"].map(|n| order.class(n).unwrap());
        order.on_acquire(&[(c, site(1))], a, site(2));
        order.on_acquire(&[(c, site(3))], b, site(4));
        let inv = order
            .on_acquire(&[(a, site(5)), (b, site(6))], c, site(7))
            .unwrap();
        assert_eq!(inv.held_name(), "a", "outermost held lock is reported");
        assert!(order.on_acquire(&[(b, site(8))], c, site(9)).is_none());
        assert_eq!(order.reports(), 1);
    }

    #[test]
    fn same_class_nesting_is_ignored() {
        let mut order = checker();
        let a = order.class("pcb").unwrap();
        assert!(order.on_acquire(&[(a, site(1))], a, site(2)).is_none());
        assert!(order
            .on_acquire(&[(a, site(1)), (a, site(2))], a, site(3))
            .is_none());
        assert!(!order.precedes(a, a));
        assert_eq!(order.edges_learned(), 0);
        assert_eq!(order.reports(), 0);
    }

    #[test]
    fn long_paths_are_cut_in_the_report() {
        let mut order = checker();
        let names = [
            "l0", "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8", "l9", "l10", "l11",
        ];
        let ids = names.map(|n| order.class(n).unwrap());
        for pair in ids.windows(2) {
            assert!(order
                .on_acquire(&[(pair[0], site(1))], pair[1], site(2))
                .is_none());
        }
        let inv = order
            .on_acquire(&[(ids[11], site(3))], ids[0], site(4))
            .unwrap();
        assert_eq!(inv.path_len(), 11);
        assert_eq!(inv.path().len(), MAX_PATH);
        let text = inv.to_string();
        assert!(text.contains("'l7' -> 'l8' -> ... -> 'l11':"), "{text}");
        assert!(text.ends_with("... 3 more steps"), "{text}");
    }

    #[test]
    fn full_edge_table_still_learns_orders_without_sites() {
        let mut order = checker();
        let ids: std::vec::Vec<ClassId> = (0..64)
            .map(|i| {
                let name: &'static str = Box::leak(format!("e{i}").into_boxed_str());
                order.class(name).unwrap()
            })
            .collect();
        // 64 * 63 / 2 = 2016 edges, all consistent (lower index first).
        for (i, &from) in ids.iter().enumerate() {
            for &to in &ids[i + 1..] {
                assert!(order.on_acquire(&[(from, site(1))], to, site(2)).is_none());
            }
        }
        assert_eq!(order.edges_learned(), 2016);
        assert_eq!(order.edges_unrecorded(), 2016 - MAX_EDGES as u64);
        let inv = order
            .on_acquire(&[(ids[63], site(3))], ids[62], site(4))
            .unwrap();
        assert_eq!(inv.path()[0].first_seen, None);
        assert!(inv.to_string().contains("<not recorded: edge table full>"));
    }

    #[test]
    fn site_comes_from_the_caller() {
        let here = Site::caller();
        assert!(here.file.ends_with("lockorder.rs"));
        assert_eq!(here.to_string(), format!("{}:{}", here.file, here.line));
    }

    #[test]
    fn const_new_works_in_a_static() {
        static ORDER: std::sync::Mutex<LockOrder> = std::sync::Mutex::new(LockOrder::new());
        let mut order = ORDER.lock().unwrap();
        let a = order.class("static.a").unwrap();
        assert_eq!(order.name(a), "static.a");
    }
}
