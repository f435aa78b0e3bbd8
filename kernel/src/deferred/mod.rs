//! Deferred work: task queues and callouts.
