//! The time budget of one apply: every wait of it (dependencies, CRDs, replacements, hooks,
//! waves, health) draws on one deadline, so [`super::Options::timeout`] bounds the whole apply,
//! as Flux's `spec.timeout` does — not each wait on its own.

use std::time::Duration;

use tokio::time::Instant;

/// When the waits of an apply must end, and the budget they were given (for messages).
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    /// A budget of `total`, starting now.
    pub fn after(total: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + total,
            total,
        }
    }

    /// No time at all: a wait looks once and returns what it saw (a preview).
    pub fn now() -> Deadline {
        Deadline::after(Duration::ZERO)
    }

    /// Whether the budget is spent.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// The whole budget, as given.
    pub fn total(&self) -> Duration {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_budget_is_shared_by_every_wait() {
        let d = Deadline::after(Duration::from_millis(300));
        assert!(!d.passed());
        let copy = d;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!copy.passed(), "a copy draws on the same budget");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(copy.passed() && d.passed());
        assert_eq!(d.total(), Duration::from_millis(300));
        assert!(Deadline::now().passed());
    }
}
