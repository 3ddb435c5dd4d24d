//! The controller's Prometheus metrics, on `prometheus-client` (OpenMetrics text, label values
//! escaped): the sync duration histogram, syncs by result, drift corrections, API requests, objects
//! managed and the last applied revision per Sync. Nothing here ever holds a secret value.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::Report;

/// Upper bounds (seconds) of the sync duration histogram.
const BUCKETS: [f64; 8] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RevisionLabels {
    namespace: String,
    name: String,
    revision: String,
}

/// `lockstep_api_requests_total`: read from the engine's request counter at each scrape.
#[derive(Debug)]
struct ApiRequests;

impl Collector for ApiRequests {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(crate::apply::requests_made() as u64);
        let metric = encoder.encode_descriptor(
            "lockstep_api_requests",
            "Kubernetes API requests this process made.",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

/// Every metric the controller exports.
pub struct Metrics {
    registry: Registry,
    durations: Histogram,
    syncs: Family<ResultLabel, Counter>,
    drift_corrections: Counter,
    objects: Family<SyncLabels, Gauge>,
    revisions: Family<RevisionLabels, Gauge>,
    /// The revision series each Sync has now, so a new revision replaces it.
    current: Mutex<HashMap<(String, String), String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        let durations = Histogram::new(BUCKETS);
        let syncs = Family::<ResultLabel, Counter>::default();
        let drift_corrections = Counter::default();
        let objects = Family::<SyncLabels, Gauge>::default();
        let revisions = Family::<RevisionLabels, Gauge>::default();
        let mut registry = Registry::default();
        registry.register(
            "lockstep_sync_duration_seconds",
            "Time one reconcile of a Sync took.",
            durations.clone(),
        );
        registry.register("lockstep_syncs", "Reconciles by result.", syncs.clone());
        registry.register(
            "lockstep_drift_corrections",
            "Objects re-applied because they were changed by hand.",
            drift_corrections.clone(),
        );
        registry.register_collector(Box::new(ApiRequests));
        registry.register(
            "lockstep_objects_managed",
            "Objects in a Sync's applied set.",
            objects.clone(),
        );
        registry.register(
            "lockstep_last_applied_revision_info",
            "The revision a Sync last applied.",
            revisions.clone(),
        );
        Metrics {
            registry,
            durations,
            syncs,
            drift_corrections,
            objects,
            revisions,
            current: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    /// Records one reconcile of Sync `namespace/name`.
    pub fn record(&self, namespace: &str, name: &str, report: &Report) {
        self.durations.observe(report.duration.as_secs_f64());
        self.syncs
            .get_or_create(&ResultLabel {
                result: report.reason.metric_label(),
            })
            .inc();
        self.drift_corrections.inc_by(report.drift_corrected as u64);
        let sync = SyncLabels {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        if let Some(n) = report.objects {
            self.objects
                .get_or_create(&sync)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        if let Some(revision) = &report.revision {
            self.set_revision(sync, revision);
        }
    }

    /// Makes `revision` the one revision series of `sync`.
    fn set_revision(&self, sync: SyncLabels, revision: &str) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (sync.namespace.clone(), sync.name.clone());
        if let Some(old) = current.insert(key, revision.to_string())
            && old != revision
        {
            self.revisions.remove(&RevisionLabels {
                namespace: sync.namespace.clone(),
                name: sync.name.clone(),
                revision: old,
            });
        }
        self.revisions
            .get_or_create(&RevisionLabels {
                namespace: sync.namespace,
                name: sync.name,
                revision: revision.to_string(),
            })
            .set(1);
    }

    /// Drops the series of a Sync that is gone (its object count and revision).
    pub fn forget(&self, namespace: &str, name: &str) {
        let sync = SyncLabels {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.objects.remove(&sync);
        let old = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(sync.namespace.clone(), sync.name.clone()));
        if let Some(revision) = old {
            self.revisions.remove(&RevisionLabels {
                namespace: sync.namespace,
                name: sync.name,
                revision,
            });
        }
    }

    /// The metrics as OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn report(ok: bool, revision: &str) -> Report {
        Report {
            ok,
            duration: Duration::from_millis(300),
            objects: Some(14),
            revision: Some(revision.into()),
            reason: if ok {
                super::super::Reason::Succeeded
            } else {
                super::super::Reason::RenderFailed
            },
            changed: 2,
            drift_corrected: 2,
            attempted: Some(revision.into()),
            message: "applied".into(),
            subject: None,
            render_digest: None,
            rollback_over: false,
        }
    }

    #[test]
    fn a_deleted_syncs_series_go_with_it() {
        let metrics = Metrics::default();
        metrics.record("shop", "web", &report(true, "abc"));
        metrics.record("shop", "api", &report(true, "def"));
        metrics.forget("shop", "web");
        let text = metrics.render();
        assert!(!text.contains("name=\"web\""), "{text}");
        assert!(text.contains("name=\"api\""), "{text}");
    }

    #[test]
    fn outcomes_are_counted_and_each_sync_has_one_revision() {
        let metrics = Metrics::default();
        metrics.record("ns", "shop", &report(true, "abc"));
        metrics.record("ns", "shop", &report(false, "abc"));
        metrics.record("ns", "shop", &report(true, "def"));
        let text = metrics.render();
        for line in [
            "lockstep_drift_corrections_total 6",
            "lockstep_syncs_total{result=\"success\"} 2",
            "lockstep_syncs_total{result=\"failure\"} 1",
            "lockstep_sync_duration_seconds_bucket{le=\"0.5\"} 3",
            "lockstep_sync_duration_seconds_bucket{le=\"0.25\"} 0",
            "lockstep_sync_duration_seconds_count 3",
            "lockstep_objects_managed{namespace=\"ns\",name=\"shop\"} 14",
            "lockstep_last_applied_revision_info{namespace=\"ns\",name=\"shop\",revision=\"def\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(
            !text.contains("revision=\"abc\""),
            "the old revision is gone:\n{text}"
        );
        assert!(text.contains("lockstep_api_requests_total "), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::default();
        metrics.record("ns", "we\"ird\nname", &report(true, "abc"));
        let text = metrics.render();
        assert!(text.contains(r#"name="we\"ird\nname""#), "{text}");
    }
}
