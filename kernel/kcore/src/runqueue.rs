//! Per-CPU run queue: one FIFO per priority, highest priority first.

use alloc::collections::VecDeque;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Priority {
    Idle = 0,
    Normal = 1,
    Driver = 2,
    Interrupt = 3,
}

impl Priority {
    /// Lowest to highest.
    pub const ALL: [Priority; 4] = [
        Priority::Idle,
        Priority::Normal,
        Priority::Driver,
        Priority::Interrupt,
    ];
}

const LEVELS: usize = Priority::ALL.len();

pub struct RunQueue<T> {
    /// Indexed by `Priority as usize`.
    levels: [VecDeque<T>; LEVELS],
    len: usize,
}

impl<T> Default for RunQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> RunQueue<T> {
    pub const fn new() -> Self {
        RunQueue {
            levels: [const { VecDeque::new() }; LEVELS],
            len: 0,
        }
    }

    /// Room for `per_level` tasks at each priority up front, so `push` does not allocate
    /// while the scheduler holds its lock with interrupts off.
    pub fn with_capacity(per_level: usize) -> Self {
        RunQueue {
            levels: [const { VecDeque::new() }; LEVELS].map(|mut q: VecDeque<T>| {
                q.reserve(per_level);
                q
            }),
            len: 0,
        }
    }

    /// Queues `task` behind everything already queued at priority `p`. Allocates only when the
    /// level is at capacity.
    pub fn push(&mut self, p: Priority, task: T) {
        self.levels[p as usize].push_back(task);
        self.len += 1;
    }

    /// The oldest task of the highest non-empty priority.
    pub fn pop(&mut self) -> Option<(Priority, T)> {
        let p = self.highest()?;
        let task = self.levels[p as usize].pop_front()?;
        self.len -= 1;
        Some((p, task))
    }

    pub fn highest(&self) -> Option<Priority> {
        Priority::ALL
            .into_iter()
            .rev()
            .find(|&p| !self.levels[p as usize].is_empty())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Tasks queued at one priority.
    pub fn len_at(&self, p: Priority) -> usize {
        self.levels[p as usize].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes the first task matching `f`, searching highest priority first and oldest first
    /// within a priority (for a task that exits or blocks while queued).
    pub fn remove_where(&mut self, mut f: impl FnMut(&T) -> bool) -> Option<(Priority, T)> {
        for p in Priority::ALL.into_iter().rev() {
            let level = &mut self.levels[p as usize];
            if let Some(index) = level.iter().position(&mut f) {
                let task = level.remove(index)?;
                self.len -= 1;
                return Some((p, task));
            }
        }
        None
    }

    /// For load balancing: the most recently queued task of the lowest non-empty priority above
    /// `Idle`. Lowest priority, because urgent work should run where it was woken; most recent,
    /// because it has waited least and its cache footprint here is coldest. Idle tasks are
    /// per-CPU and never move.
    pub fn steal(&mut self) -> Option<(Priority, T)> {
        let p = Priority::ALL[1..]
            .iter()
            .copied()
            .find(|&p| !self.levels[p as usize].is_empty())?;
        let task = self.levels[p as usize].pop_back()?;
        self.len -= 1;
        Some((p, task))
    }

    /// Queued tasks, highest priority first, oldest first within a priority.
    pub fn iter(&self) -> impl Iterator<Item = (Priority, &T)> + '_ {
        Priority::ALL
            .into_iter()
            .rev()
            .flat_map(move |p| self.levels[p as usize].iter().map(move |t| (p, t)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn drain(q: &mut RunQueue<u32>) -> Vec<(Priority, u32)> {
        core::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn pops_highest_priority_first_and_fifo_within_a_priority() {
        let mut q = RunQueue::new();
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
        assert_eq!(q.highest(), None);
        q.push(Priority::Normal, 1);
        q.push(Priority::Idle, 2);
        q.push(Priority::Interrupt, 3);
        q.push(Priority::Normal, 4);
        q.push(Priority::Driver, 5);
        q.push(Priority::Interrupt, 6);
        assert_eq!(q.len(), 6);
        assert_eq!(q.len_at(Priority::Normal), 2);
        assert_eq!(q.highest(), Some(Priority::Interrupt));
        assert_eq!(
            drain(&mut q),
            [
                (Priority::Interrupt, 3),
                (Priority::Interrupt, 6),
                (Priority::Driver, 5),
                (Priority::Normal, 1),
                (Priority::Normal, 4),
                (Priority::Idle, 2),
            ]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn steal_takes_newest_of_lowest_priority_above_idle() {
        let mut q = RunQueue::with_capacity(4);
        q.push(Priority::Idle, 0);
        assert_eq!(q.steal(), None, "idle tasks never migrate");
        q.push(Priority::Driver, 10);
        q.push(Priority::Normal, 1);
        q.push(Priority::Normal, 2);
        q.push(Priority::Interrupt, 20);
        assert_eq!(q.steal(), Some((Priority::Normal, 2)));
        assert_eq!(q.steal(), Some((Priority::Normal, 1)));
        assert_eq!(q.steal(), Some((Priority::Driver, 10)));
        assert_eq!(q.steal(), Some((Priority::Interrupt, 20)));
        assert_eq!(q.steal(), None);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop(), Some((Priority::Idle, 0)));
    }

    #[test]
    fn remove_where_takes_first_match_and_keeps_order() {
        let mut q = RunQueue::new();
        q.push(Priority::Normal, 1);
        q.push(Priority::Normal, 2);
        q.push(Priority::Normal, 3);
        q.push(Priority::Driver, 2);
        // Highest priority searched first.
        assert_eq!(q.remove_where(|&t| t == 2), Some((Priority::Driver, 2)));
        assert_eq!(q.remove_where(|&t| t == 2), Some((Priority::Normal, 2)));
        assert_eq!(q.remove_where(|&t| t == 2), None);
        assert_eq!(q.len(), 2);
        assert_eq!(
            drain(&mut q),
            [(Priority::Normal, 1), (Priority::Normal, 3)]
        );
    }

    #[test]
    fn iter_matches_pop_order_and_len_tracks_every_path() {
        let mut q = RunQueue::new();
        for i in 0..20u32 {
            q.push(Priority::ALL[(i % 4) as usize], i);
        }
        let listed: Vec<(Priority, u32)> = q.iter().map(|(p, &t)| (p, t)).collect();
        assert_eq!(q.steal(), Some((Priority::Normal, 17)));
        assert_eq!(q.remove_where(|&t| t == 3), Some((Priority::Interrupt, 3)));
        assert_eq!(q.len(), 18);
        let popped = drain(&mut q);
        let expected: Vec<(Priority, u32)> = listed
            .into_iter()
            .filter(|&(_, t)| t != 17 && t != 3)
            .collect();
        assert_eq!(popped, expected);
        assert_eq!(q.len(), 0);
        assert!(Priority::Idle < Priority::Normal && Priority::Driver < Priority::Interrupt);
    }

    #[test]
    fn const_new_works_in_a_static() {
        static QUEUE: std::sync::Mutex<RunQueue<u32>> = std::sync::Mutex::new(RunQueue::new());
        QUEUE.lock().unwrap().push(Priority::Driver, 7);
        assert_eq!(QUEUE.lock().unwrap().pop(), Some((Priority::Driver, 7)));
    }
}
