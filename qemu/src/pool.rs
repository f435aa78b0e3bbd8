//! Runs independent jobs a few at a time and hands back their results in job order.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{mpsc, Mutex};
use std::thread;

/// Runs `work` over `jobs` on at most `workers` threads; calls `report` with each result in
/// job order, as soon as it and every earlier result are in.
pub fn run_ordered<J, R>(
    jobs: Vec<J>,
    workers: usize,
    work: impl Fn(J) -> R + Sync,
    mut report: impl FnMut(R),
) where
    J: Send,
    R: Send,
{
    let count = jobs.len();
    let queue = Mutex::new(jobs.into_iter().enumerate().collect::<VecDeque<_>>());
    let (sender, results) = mpsc::channel();
    thread::scope(|scope| {
        for _ in 0..workers.max(1).min(count) {
            let sender = sender.clone();
            let (queue, work) = (&queue, &work);
            scope.spawn(move || loop {
                let Some((index, job)) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                if sender.send((index, work(job))).is_err() {
                    break;
                }
            });
        }
        drop(sender);
        let mut waiting = BTreeMap::new();
        let mut next = 0;
        for (index, result) in results {
            waiting.insert(index, result);
            while let Some(result) = waiting.remove(&next) {
                report(result);
                next += 1;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[test]
    fn results_come_in_job_order() {
        let mut seen = Vec::new();
        run_ordered(
            vec![30u64, 1, 20, 2, 0],
            2,
            |ms| {
                thread::sleep(Duration::from_millis(ms));
                ms
            },
            |r| seen.push(r),
        );
        assert_eq!(seen, [30, 1, 20, 2, 0]);
    }

    #[test]
    fn never_more_than_the_worker_count_at_once() {
        let running = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        run_ordered(
            (0..8).collect(),
            2,
            |_| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(10));
                running.fetch_sub(1, Ordering::SeqCst);
            },
            |_| {},
        );
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn no_jobs() {
        run_ordered(
            Vec::<u8>::new(),
            2,
            |j| j,
            |_| panic!("no results expected"),
        );
    }
}
