//! Test outcomes, their printing and the totals line.

/// Lines of serial output shown with a failed boot.
pub const FAILURE_TAIL_LINES: usize = 40;

/// One test's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestOutcome {
    /// Name as printed (`ktest::mutex_fairness`, `boot::stack_overflow`, ...).
    pub name: String,
    /// `Ok(detail)` or `Err(reason)`.
    pub result: Result<String, String>,
    /// Lines printed under a failure (serial tail, QEMU's stderr, log path).
    pub context: Vec<String>,
}

impl TestOutcome {
    /// A passed test with a short detail (a time, say), possibly empty.
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Self {
        TestOutcome {
            name: name.into(),
            result: Ok(detail.into()),
            context: Vec::new(),
        }
    }

    /// A failed test with its reason.
    pub fn fail(name: impl Into<String>, reason: impl Into<String>) -> Self {
        TestOutcome {
            name: name.into(),
            result: Err(reason.into()),
            context: Vec::new(),
        }
    }

    /// Adds context lines shown under a failure.
    pub fn with_context(mut self, context: Vec<String>) -> Self {
        self.context = context;
        self
    }

    /// The result line: `test NAME ... ok (detail)` or `test NAME ... FAILED: reason`.
    pub fn line(&self) -> String {
        match &self.result {
            Ok(detail) if detail.is_empty() => format!("test {} ... ok", self.name),
            Ok(detail) => format!("test {} ... ok ({detail})", self.name),
            Err(reason) => format!("test {} ... FAILED: {reason}", self.name),
        }
    }

    /// Prints the result line, and the context under a failure.
    pub fn print(&self) {
        println!("{}", self.line());
        if self.result.is_err() {
            for line in &self.context {
                println!("    | {line}");
            }
        }
    }
}

/// Running totals of a test run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    /// Number passed.
    pub passed: u64,
    /// Number failed.
    pub failed: u64,
    /// Names of the failed tests (or groups), in order.
    pub failures: Vec<String>,
}

impl Totals {
    /// Counts one outcome.
    pub fn add(&mut self, outcome: &TestOutcome) {
        match outcome.result {
            Ok(_) => self.passed += 1,
            Err(_) => {
                self.failed += 1;
                self.failures.push(outcome.name.clone());
            }
        }
    }

    /// Counts a group of tests reported elsewhere (the host cargo tests).
    pub fn add_counts(&mut self, group: &str, passed: u64, failed: u64) {
        self.passed += passed;
        self.failed += failed;
        if failed > 0 {
            self.failures.push(format!("{group} ({failed} failed)"));
        }
    }

    /// The closing line: exactly `N passed, N failed`.
    pub fn closing_line(&self) -> String {
        format!("{} passed, {} failed", self.passed, self.failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_lines() {
        assert_eq!(
            TestOutcome::pass("ktest::a", "3 ms").line(),
            "test ktest::a ... ok (3 ms)"
        );
        assert_eq!(TestOutcome::pass("x", "").line(), "test x ... ok");
        assert_eq!(
            TestOutcome::fail("x", "hung").line(),
            "test x ... FAILED: hung"
        );
    }

    #[test]
    fn totals_and_closing_line() {
        let mut t = Totals::default();
        t.add_counts("host", 10, 0);
        t.add(&TestOutcome::pass("a", ""));
        t.add(&TestOutcome::fail("b", "no"));
        assert_eq!(t.closing_line(), "11 passed, 1 failed");
        assert_eq!(t.failures, ["b"]);
    }
}
