//! Deferred work: [`TaskQueue`] runs queued work items in order on its own thread;
//! [`Callout`]s run timer-driven work in thread context (the `softclock` thread).

mod callout;
mod taskqueue;

pub use callout::{init as init_callouts, Callout};
pub use taskqueue::TaskQueue;
