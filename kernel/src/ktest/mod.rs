//! The in-kernel test suite.
pub fn run(_which: &str) {}
