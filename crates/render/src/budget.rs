//! One render's budget: the bytes its templates may produce and the steps they may take, shared by
//! every template, include and helper of the render (templates come from Git and may be hostile).
//!
//! minijinja charges fuel only between instructions and knows nothing of the whole render, so a
//! single `{{ … }}` printing a lazily repeated list, or ten thousand templates each just under their
//! fuel, could still take the process's memory or an hour of CPU. The budget closes both: template
//! output goes through a [`Sink`] that refuses the byte past [`Limits::output_bytes`], helpers size
//! what they build against what is left, and the fuel every template used is charged to one total.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Bytes all templates of one render may produce together (the YAML parsed afterwards is a few
/// times larger in memory).
pub const MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

/// Steps all templates of one render may take together (each one also stops at [`crate::FUEL`]).
pub const TOTAL_FUEL: u64 = 20 * crate::FUEL;

/// What one render may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of template output, includes and helper results counted as they are made.
    pub output_bytes: usize,
    /// minijinja fuel summed over every template.
    pub fuel: u64,
    /// minijinja fuel of one template.
    pub template_fuel: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            output_bytes: MAX_OUTPUT_BYTES,
            fuel: TOTAL_FUEL,
            template_fuel: crate::FUEL,
        }
    }
}

/// What one render has used so far; shared by the threads rendering its templates.
#[derive(Debug)]
pub struct Budget {
    limits: Limits,
    bytes: AtomicUsize,
    fuel: AtomicU64,
    refused: AtomicBool,
}

/// Why a render ran out of its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// More output than [`Limits::output_bytes`].
    Output,
    /// More steps than [`Limits::fuel`].
    Fuel,
}

impl Limits {
    /// What a render did past `spent`, as a phrase: "produce more than 16 MiB of output".
    pub fn passed(&self, spent: Exhausted) -> String {
        match spent {
            Exhausted::Output => format!(
                "produce more than {} MiB of output",
                self.output_bytes / (1024 * 1024)
            ),
            Exhausted::Fuel => format!("take more than {} steps", self.fuel),
        }
    }
}

impl Budget {
    /// A fresh budget.
    pub fn new(limits: Limits) -> Arc<Budget> {
        Arc::new(Budget {
            limits,
            bytes: AtomicUsize::new(0),
            fuel: AtomicU64::new(0),
            refused: AtomicBool::new(false),
        })
    }

    /// The limits it enforces.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Takes `n` bytes; fails (taking nothing) when that would pass the limit.
    pub fn take_bytes(&self, n: usize) -> Result<(), Exhausted> {
        let limit = self.limits.output_bytes;
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= limit)
            })
            .map(drop)
            .map_err(|_| {
                self.refused.store(true, Ordering::Relaxed);
                Exhausted::Output
            })
    }

    /// Gives back `n` bytes taken earlier (an include's output, charged again where it is printed).
    pub fn refund_bytes(&self, n: usize) {
        let _ = self
            .bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                Some(used.saturating_sub(n))
            });
    }

    /// Bytes still free.
    pub fn bytes_left(&self) -> usize {
        self.limits
            .output_bytes
            .saturating_sub(self.bytes.load(Ordering::Relaxed))
    }

    /// Charges the fuel one template used.
    pub fn charge_fuel(&self, used: u64) {
        self.fuel.fetch_add(used, Ordering::Relaxed);
    }

    /// Whether the total fuel is spent (no further template starts).
    pub fn fuel_spent(&self) -> bool {
        self.fuel.load(Ordering::Relaxed) >= self.limits.fuel
    }

    /// Which limit was passed, if any.
    pub fn exhausted(&self) -> Option<Exhausted> {
        if self.refused.load(Ordering::Relaxed) {
            Some(Exhausted::Output)
        } else if self.fuel_spent() {
            Some(Exhausted::Fuel)
        } else {
            None
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Budget>>> = const { RefCell::new(None) };
}

/// Runs `f` with `budget` as the budget helpers on this thread charge.
pub fn with<R>(budget: &Arc<Budget>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Arc<Budget>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| *c.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(budget.clone())));
    f()
}

/// The budget of the render running on this thread (none outside a render: helpers used on their
/// own, as in tests, are then bounded by [`MAX_OUTPUT_BYTES`] alone).
pub fn current() -> Option<Arc<Budget>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Bytes a helper may still build on this thread.
pub fn bytes_left() -> usize {
    current().map_or(MAX_OUTPUT_BYTES, |b| b.bytes_left())
}

/// Template output collected under a budget: writing past it fails, so minijinja stops the render.
pub struct Sink {
    budget: Arc<Budget>,
    out: Vec<u8>,
}

impl Sink {
    /// An empty sink charging `budget`.
    pub fn new(budget: Arc<Budget>) -> Sink {
        Sink {
            budget,
            out: Vec::new(),
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// The text written (minijinja writes only `str`s, so it is UTF-8; anything else is replaced).
    pub fn into_string(self) -> String {
        String::from_utf8(self.out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }
}

impl io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.budget
            .take_bytes(buf.len())
            .map_err(|_| io::Error::other("the render's output budget is spent"))?;
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn a_sink_refuses_the_byte_past_the_budget_and_keeps_what_fit() {
        let budget = Budget::new(Limits {
            output_bytes: 10,
            ..Limits::default()
        });
        let mut sink = Sink::new(budget.clone());
        sink.write_all(b"0123456789").expect("fits");
        assert!(sink.write_all(b"x").is_err());
        assert_eq!(sink.len(), 10);
        assert_eq!(budget.exhausted(), Some(Exhausted::Output));
        budget.refund_bytes(4);
        assert_eq!(budget.bytes_left(), 4);
    }

    #[test]
    fn fuel_adds_up_over_templates() {
        let budget = Budget::new(Limits {
            fuel: 100,
            ..Limits::default()
        });
        budget.charge_fuel(60);
        assert!(!budget.fuel_spent());
        budget.charge_fuel(40);
        assert_eq!(budget.exhausted(), Some(Exhausted::Fuel));
    }

    #[test]
    fn the_current_budget_is_per_thread_and_restored() {
        let budget = Budget::new(Limits::default());
        assert!(current().is_none());
        with(&budget, || {
            budget.take_bytes(5).expect("fits");
            assert_eq!(bytes_left(), MAX_OUTPUT_BYTES - 5);
            std::thread::scope(|s| {
                s.spawn(|| assert!(current().is_none()));
            });
        });
        assert!(current().is_none());
    }
}
