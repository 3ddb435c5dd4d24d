//! The Kubernetes object vocabulary every stage shares: an object's identity, which kinds are
//! cluster-scoped, and the order kinds are written in. Render decides placement with it; decrypt,
//! apply and the controller name objects with it.

use std::collections::BTreeSet;
use std::fmt;

use yaml_serde::Value;

/// Why `name` cannot be an object's name or namespace in an API URL, if it cannot: Kubernetes'
/// own rule for path segments (not `.` or `..`, no `/` or `%`), plus a length bound. Names from
/// Git, from a Sync's spec and from an inventory pass through it before they reach a URL.
pub fn path_segment_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not names")
    } else if name.contains('/') || name.contains('%') {
        Some("a name may not contain `/` or `%`")
    } else if name.len() > 253 {
        Some("a name has at most 253 characters")
    } else if name.chars().any(char::is_control) {
        Some("a name may not contain control characters")
    } else {
        None
    }
}

/// The identity of a Kubernetes object: API group, kind, namespace (when namespaced) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId {
    /// API group (`""` for the core group).
    pub group: String,
    /// Kind.
    pub kind: String,
    /// Namespace; `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        };
        match &self.namespace {
            Some(ns) => write!(f, "{kind} {ns}/{}", self.name),
            None => write!(f, "{kind} {}", self.name),
        }
    }
}

/// The group part of an `apiVersion` (`apps/v1` → `apps`, `v1` → ``).
pub fn group_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// Built-in cluster-scoped kinds, by (group, kind).
const CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    ("", "ComponentStatus"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("apiregistration.k8s.io", "APIService"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("storage.k8s.io", "VolumeAttributesClass"),
    ("networking.k8s.io", "IngressClass"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("node.k8s.io", "RuntimeClass"),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "ValidatingAdmissionPolicyBinding",
    ),
    ("admissionregistration.k8s.io", "MutatingAdmissionPolicy"),
    (
        "admissionregistration.k8s.io",
        "MutatingAdmissionPolicyBinding",
    ),
    ("certificates.k8s.io", "CertificateSigningRequest"),
    ("flowcontrol.apiserver.k8s.io", "FlowSchema"),
    ("flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration"),
    ("resource.k8s.io", "DeviceClass"),
];

/// Whether a built-in kind is cluster-scoped (custom kinds: see [`Scopes`]).
pub fn is_builtin_cluster_scoped(group: &str, kind: &str) -> bool {
    CLUSTER_SCOPED.iter().any(|&(g, k)| g == group && k == kind)
}

/// Which custom kinds the set's own CRDs declare cluster-scoped.
#[derive(Debug, Default, Clone)]
pub struct Scopes {
    cluster: BTreeSet<(String, String)>,
}

impl Scopes {
    /// Learns from a CRD object (`spec.group`, `spec.names.kind`, `spec.scope`).
    pub fn learn(&mut self, object: &Value) {
        let spec = &object["spec"];
        if let (Some(group), Some(kind), Some("Cluster")) = (
            spec["group"].as_str(),
            spec["names"]["kind"].as_str(),
            spec["scope"].as_str(),
        ) {
            self.cluster.insert((group.to_string(), kind.to_string()));
        }
    }

    /// Whether objects of this kind are cluster-scoped.
    pub fn is_cluster_scoped(&self, group: &str, kind: &str) -> bool {
        is_builtin_cluster_scoped(group, kind)
            || self
                .cluster
                .contains(&(group.to_string(), kind.to_string()))
    }
}

/// The order objects are written and applied in: definitions and namespaces first, then policy,
/// identity and configuration, then workloads, then what routes to them; admission webhooks last
/// (they can block everything else while their backend is not up). Unknown kinds come after the
/// known ones, before webhooks.
const KIND_ORDER: &[&str] = &[
    "CustomResourceDefinition",
    "Namespace",
    "ResourceQuota",
    "LimitRange",
    "PriorityClass",
    "StorageClass",
    "IngressClass",
    "RuntimeClass",
    "ClusterRole",
    "ClusterRoleBinding",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "NetworkPolicy",
    "PodDisruptionBudget",
    "Secret",
    "ConfigMap",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicaSet",
    "Deployment",
    "StatefulSet",
    "HorizontalPodAutoscaler",
    "Job",
    "CronJob",
    "Ingress",
    "APIService",
];

const WEBHOOK_KINDS: &[&str] = &[
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// The rank of a kind in the apply order (lower first): definitions and namespaces first, admission
/// webhooks last, unknown kinds between.
pub fn kind_rank(kind: &str) -> usize {
    if let Some(i) = KIND_ORDER.iter().position(|k| *k == kind) {
        return i;
    }
    match WEBHOOK_KINDS.iter().position(|k| *k == kind) {
        Some(i) => KIND_ORDER.len() + 1 + i,
        None => KIND_ORDER.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_change_an_api_url_are_refused() {
        for bad in ["", ".", "..", "a/b", "../secrets", "a%2Fb", "a\nb"] {
            assert!(path_segment_problem(bad).is_some(), "{bad:?}");
        }
        for good in ["web", "web.v1", "system:controller", "a..b"] {
            assert!(path_segment_problem(good).is_none(), "{good}");
        }
    }

    #[test]
    fn kinds_sort_definitions_first_and_webhooks_last() {
        assert!(kind_rank("CustomResourceDefinition") < kind_rank("Namespace"));
        assert!(kind_rank("Secret") < kind_rank("Deployment"));
        assert!(kind_rank("Deployment") < kind_rank("Backup"));
        assert!(kind_rank("Backup") < kind_rank("ValidatingWebhookConfiguration"));
    }
}
