//! A thread that runs queued work items one after another, in the order queued.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::sched::{self, JoinHandle, Priority};
use crate::sync::{CondVar, Mutex, Semaphore};

type Work = Box<dyn FnOnce() + Send>;

struct Shared {
    queue: Mutex<VecDeque<Work>>,
    more: CondVar,
    stopping: AtomicBool,
    executed: AtomicU64,
}

pub struct TaskQueue {
    shared: Arc<Shared>,
    thread: Option<JoinHandle>,
}

impl TaskQueue {
    pub fn new(name: impl Into<String>, priority: Priority) -> TaskQueue {
        let shared = Arc::new(Shared {
            queue: Mutex::new("taskqueue", VecDeque::new()),
            more: CondVar::new(),
            stopping: AtomicBool::new(false),
            executed: AtomicU64::new(0),
        });
        let worker = shared.clone();
        let thread = sched::Spawn::new(name)
            .priority(priority)
            .start(move || run(worker));
        TaskQueue {
            shared,
            thread: Some(thread),
        }
    }

    pub fn enqueue(&self, work: impl FnOnce() + Send + 'static) {
        self.shared.queue.lock().push_back(Box::new(work));
        self.shared.more.notify_one();
    }

    /// Waits until everything queued before this call has run.
    pub fn flush(&self) {
        let done = Arc::new(Semaphore::new(0));
        let signal = done.clone();
        self.enqueue(move || signal.up());
        done.down();
    }

    pub fn executed(&self) -> u64 {
        self.shared.executed.load(Ordering::Relaxed)
    }
}

impl Drop for TaskQueue {
    /// Runs what is still queued, then ends the thread.
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.more.notify_all();
        if let Some(thread) = self.thread.take() {
            thread.join();
        }
    }
}

fn run(shared: Arc<Shared>) {
    loop {
        let mut queue = shared.queue.lock();
        while queue.is_empty() && !shared.stopping.load(Ordering::Acquire) {
            queue = shared.more.wait(queue);
        }
        let Some(work) = queue.pop_front() else {
            return;
        };
        drop(queue);
        work();
        shared.executed.fetch_add(1, Ordering::Relaxed);
    }
}
