//! TX watchdog policies: when to reset a NIC whose transmitter stopped completing frames.
//!
//! Both policies are ticked once per interval (a second by default) by the interface; they only
//! decide, the driver resets. Two designs, after ../shared/seeds/004:
//!
//! - [`Policy::Progress`] (default) asks two questions each tick: is there work queued to the
//!   device, and did any frame complete since the last tick? The driver keeps two counters only
//!   (frames queued and not completed, frames completed in total). The timer then means "ticks
//!   since work was missed", and a wedge is caught after `threshold` ticks whatever the load.
//! - [`Policy::Classic`] is the traditional one: the start routine sets a timer to 5 when it
//!   queues a frame, the completion routine clears it when the queue empties, each tick
//!   decrements it and the 1 -> 0 step resets. Under a light load (one frame a second) every new
//!   frame pushes the timer back up, so a wedge goes unnoticed until the queue is full. It is
//!   kept so the recovery benchmark can show that, measured.

use core::fmt;

/// Default ticks without progress before the progress policy resets.
pub const DEFAULT_THRESHOLD: u32 = 2;
/// The value the classic policy's start routine loads.
pub const CLASSIC_START: u32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Reset after `threshold` ticks with frames queued and none completed.
    Progress { threshold: u32 },
    /// The start/complete/tick-down timer starting at `start`.
    Classic { start: u32 },
    /// Never reset.
    Off,
}

impl Default for Policy {
    fn default() -> Self {
        Policy::Progress {
            threshold: DEFAULT_THRESHOLD,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Progress { threshold } => write!(f, "progress (threshold {threshold})"),
            Policy::Classic { start } => write!(f, "classic (start {start})"),
            Policy::Off => f.write_str("off"),
        }
    }
}

/// A `watchdog=` value that is not understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadPolicy<'a>(pub &'a str);

impl fmt::Display for BadPolicy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "watchdog={}: expected progress, progress:N (N ticks, 1-60), classic, classic:N or off",
            self.0
        )
    }
}

impl Policy {
    /// Parses `progress`, `progress:N`, `classic`, `classic:N` or `off`.
    pub fn parse(text: &str) -> Result<Policy, BadPolicy<'_>> {
        let (name, value) = match text.split_once(':') {
            Some((name, value)) => (name, Some(value)),
            None => (text, None),
        };
        let number = |default: u32| match value {
            None => Ok(default),
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=60).contains(n))
                .ok_or(BadPolicy(text)),
        };
        match name {
            "progress" => Ok(Policy::Progress {
                threshold: number(DEFAULT_THRESHOLD)?,
            }),
            "classic" => Ok(Policy::Classic {
                start: number(CLASSIC_START)?,
            }),
            "off" if value.is_none() => Ok(Policy::Off),
            _ => Err(BadPolicy(text)),
        }
    }
}

/// What the driver reports at a tick: frames handed to the device and not yet completed, and
/// frames completed since the interface came up (a running total).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxActivity {
    pub queued: u64,
    pub completed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    /// Reset the interface now.
    Reset,
}

/// One interface's watchdog state.
#[derive(Clone, Debug)]
pub struct Watchdog {
    policy: Policy,
    timer: u32,
    completed_at_last_tick: u64,
}

impl Watchdog {
    pub fn new(policy: Policy) -> Watchdog {
        Watchdog {
            policy,
            timer: 0,
            completed_at_last_tick: 0,
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The policy's timer: ticks since work was missed (progress), or the classic countdown.
    pub fn timer(&self) -> u32 {
        self.timer
    }

    /// The driver queued a frame to the device (the classic policy's start routine).
    pub fn on_start(&mut self) {
        if let Policy::Classic { start } = self.policy {
            self.timer = start;
        }
    }

    /// The driver reclaimed the last outstanding frame (the classic completion routine).
    pub fn on_queue_empty(&mut self) {
        if let Policy::Classic { .. } = self.policy {
            self.timer = 0;
        }
    }

    /// The periodic check.
    pub fn tick(&mut self, activity: TxActivity) -> Verdict {
        let progressed = activity.completed != self.completed_at_last_tick;
        self.completed_at_last_tick = activity.completed;
        match self.policy {
            Policy::Off => Verdict::Healthy,
            Policy::Progress { threshold } => {
                if activity.queued == 0 || progressed {
                    self.timer = 0;
                    return Verdict::Healthy;
                }
                self.timer += 1;
                if self.timer >= threshold {
                    self.timer = 0;
                    Verdict::Reset
                } else {
                    Verdict::Healthy
                }
            }
            Policy::Classic { .. } => match self.timer {
                0 => Verdict::Healthy,
                1 => {
                    self.timer = 0;
                    Verdict::Reset
                }
                _ => {
                    self.timer -= 1;
                    Verdict::Healthy
                }
            },
        }
    }

    /// The interface was reset (by this watchdog or otherwise): start counting afresh.
    pub fn after_reset(&mut self, activity: TxActivity) {
        self.timer = 0;
        self.completed_at_last_tick = activity.completed;
    }
}

/// A tick-by-tick model of a NIC with a bounded transmit queue, used by the tests to drive
/// both policies through the seed's three loads, and by the benchmark's documentation.
pub mod model {
    use super::{Policy, TxActivity, Verdict, Watchdog};

    /// How often the stack hands the NIC a frame.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Load {
        /// A frame every `period` ticks, with `period` > 5 (more than 5 s between packets).
        Idle { period: u32 },
        /// As many frames per tick as the queue takes (iperf3 at full rate).
        Busy,
        /// One small frame per tick (ping).
        Light,
    }

    /// Simulates `ticks` ticks of a NIC whose transmitter wedges at tick `wedge_at`, with a queue
    /// of `queue_len` frames, and returns the tick at which the watchdog resets (None: never).
    /// While healthy the device completes every queued frame within the tick.
    pub fn ticks_to_reset(
        policy: Policy,
        load: Load,
        queue_len: u64,
        wedge_at: u32,
        ticks: u32,
    ) -> Option<u32> {
        let mut watchdog = Watchdog::new(policy);
        let mut queued = 0u64;
        let mut completed = 0u64;
        for tick in 0..ticks {
            let frames = match load {
                Load::Idle { period } => u64::from(tick % period == 0),
                Load::Light => 1,
                Load::Busy => queue_len,
            };
            for _ in 0..frames {
                if queued < queue_len {
                    queued += 1;
                    watchdog.on_start();
                }
            }
            if tick < wedge_at && queued > 0 {
                completed += queued;
                queued = 0;
                watchdog.on_queue_empty();
            }
            if watchdog.tick(TxActivity { queued, completed }) == Verdict::Reset {
                if tick >= wedge_at {
                    return Some(tick);
                }
                panic!("reset at tick {tick} of a healthy device");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::model::{ticks_to_reset, Load};
    use super::*;
    use alloc::string::ToString;

    const IDLE: Load = Load::Idle { period: 7 };
    const QUEUE: u64 = 32;

    fn progress() -> Policy {
        Policy::default()
    }

    fn classic() -> Policy {
        Policy::Classic {
            start: CLASSIC_START,
        }
    }

    #[test]
    fn parses_policies_and_rejects_nonsense() {
        assert_eq!(Policy::parse("progress"), Ok(progress()));
        assert_eq!(
            Policy::parse("progress:3"),
            Ok(Policy::Progress { threshold: 3 })
        );
        assert_eq!(Policy::parse("classic"), Ok(classic()));
        assert_eq!(Policy::parse("classic:9"), Ok(Policy::Classic { start: 9 }));
        assert_eq!(Policy::parse("off"), Ok(Policy::Off));
        for bad in [
            "",
            "progress:",
            "progress:0",
            "progress:61",
            "classic:x",
            "off:1",
            "fast",
        ] {
            assert_eq!(Policy::parse(bad), Err(BadPolicy(bad)), "{bad}");
        }
        assert!(BadPolicy("fast").to_string().contains("watchdog=fast"));
    }

    #[test]
    fn progress_stays_quiet_without_work_or_with_progress() {
        let mut dog = Watchdog::new(progress());
        for _ in 0..10 {
            assert_eq!(dog.tick(TxActivity::default()), Verdict::Healthy);
        }
        for completed in 1..10 {
            let activity = TxActivity {
                queued: 5,
                completed,
            };
            assert_eq!(dog.tick(activity), Verdict::Healthy);
            assert_eq!(dog.timer(), 0);
        }
    }

    #[test]
    fn progress_timer_counts_ticks_since_work_was_missed() {
        let mut dog = Watchdog::new(Policy::Progress { threshold: 3 });
        let stuck = TxActivity {
            queued: 1,
            completed: 0,
        };
        assert_eq!(dog.tick(stuck), Verdict::Healthy);
        assert_eq!(dog.timer(), 1);
        assert_eq!(dog.tick(stuck), Verdict::Healthy);
        assert_eq!(dog.timer(), 2);
        assert_eq!(dog.tick(stuck), Verdict::Reset);
        dog.after_reset(stuck);
        assert_eq!(dog.timer(), 0);
    }

    #[test]
    fn progress_catches_a_wedge_within_two_ticks_under_every_load() {
        for load in [IDLE, Load::Busy, Load::Light] {
            for wedge_at in [10, 11, 12, 13, 14, 15, 16] {
                let reset = ticks_to_reset(progress(), load, QUEUE, wedge_at, 200)
                    .unwrap_or_else(|| panic!("{load:?}: wedge at {wedge_at} never caught"));
                // Idle: the wedge is only visible once a frame is queued after it.
                let first_frame = match load {
                    Load::Idle { period } => wedge_at.div_ceil(period) * period,
                    _ => wedge_at,
                };
                assert!(
                    reset - first_frame < DEFAULT_THRESHOLD,
                    "{load:?}: wedge at {wedge_at} (first frame {first_frame}) caught at {reset}"
                );
            }
        }
    }

    #[test]
    fn classic_is_prompt_when_idle_or_busy() {
        for load in [IDLE, Load::Busy] {
            let reset = ticks_to_reset(classic(), load, QUEUE, 14, 200).unwrap();
            let first_frame = match load {
                Load::Idle { period } => 14u32.div_ceil(period) * period,
                _ => 14,
            };
            assert!(
                reset - first_frame <= CLASSIC_START,
                "{load:?}: caught at {reset}"
            );
        }
    }

    #[test]
    fn classic_misses_a_wedge_under_light_load_until_the_queue_fills() {
        // The seed's scenario three: one frame a second keeps reloading the timer, so the
        // reset waits for the queue to fill and then for the countdown.
        // The last frame fits at tick wedge + QUEUE - 1 and loads the timer; that tick and the
        // next three count it down to 1, the fourth resets.
        let reset = ticks_to_reset(classic(), Load::Light, QUEUE, 10, 500).unwrap();
        assert_eq!(reset - 10, QUEUE as u32 + CLASSIC_START - 2);
        let reset = ticks_to_reset(classic(), Load::Light, 100, 10, 500).unwrap();
        assert!(reset - 10 > 60, "a 100-frame queue: {}", reset - 10);
        // The progress policy on the same load and queue.
        let reset = ticks_to_reset(progress(), Load::Light, 100, 10, 500).unwrap();
        assert!(reset - 10 < DEFAULT_THRESHOLD);
    }

    #[test]
    fn off_never_resets() {
        for load in [IDLE, Load::Busy, Load::Light] {
            assert_eq!(ticks_to_reset(Policy::Off, load, QUEUE, 5, 300), None);
        }
    }

    #[test]
    fn healthy_devices_are_never_reset() {
        for policy in [progress(), classic()] {
            for load in [IDLE, Load::Busy, Load::Light] {
                assert_eq!(ticks_to_reset(policy, load, QUEUE, u32::MAX, 300), None);
            }
        }
    }
}
