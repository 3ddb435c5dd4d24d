//! Objects whose change the API server refuses because a field is immutable (a Job's
//! `spec.template`, a Service's `clusterIP`, a Deployment's `selector`): a clear error naming the
//! field and the opt-in, or — with `lockstep.dev/replace: "true"` on the object — delete it (its
//! dependents with it) and create it again. Never a sync stuck on the same refusal.

use serde_json::Value as Json;

/// The opt-in annotation: `"true"` lets lockstep delete and re-create the object when a change
/// touches an immutable field.
pub const REPLACE: &str = "lockstep.dev/replace";

/// Whether the object opts in to [`REPLACE`].
pub fn opted_in(body: &Json) -> bool {
    body["metadata"]["annotations"][REPLACE]
        .as_str()
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// The immutable field an API server refusal names (`spec.template` of `Job.batch "x" is
/// invalid: spec.template: Invalid value: …: field is immutable`), or `None` for any other
/// refusal.
pub fn immutable_field(message: &str) -> Option<String> {
    if !message.contains("field is immutable") {
        return None;
    }
    let after = message
        .split_once("is invalid: ")
        .map_or(message, |(_, rest)| rest);
    // Several causes (`[a: …, b: …]`): replacing would not fix the others; the server's
    // message stands.
    if after.starts_with('[') {
        return None;
    }
    let field = after
        .split(": ")
        .next()
        .filter(|f| !f.is_empty() && !f.contains(' '))
        .unwrap_or("a field");
    Some(field.to_string())
}

/// The refusal said to the user: the field, why, and the two ways out. (The server's message is
/// dropped: it quotes the whole old and new value.)
pub fn explain(kind: &str, field: &str) -> String {
    format!(
        "{field}: field is immutable — a {kind} cannot change it once created. Add the annotation {REPLACE}: \"true\" to have lockstep delete it and create it again (what depends on it, a Job's pods, goes with it), or give it a new name"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_immutable_field_is_read_from_the_servers_refusal() {
        let job = r#"Job.batch "migrate" is invalid: spec.template: Invalid value: core.PodTemplateSpec{ObjectMeta:v1.ObjectMeta{Name:""}}: field is immutable"#;
        assert_eq!(immutable_field(job).as_deref(), Some("spec.template"));
        assert_eq!(
            immutable_field(
                r#"Service "web" is invalid: spec.clusterIPs[0]: Invalid value: []string{"10.0.0.9"}: may not change once set"#
            ),
            None
        );
        assert_eq!(
            immutable_field("field is immutable").as_deref(),
            Some("a field")
        );
        let two = r#"Deployment.apps "web" is invalid: [spec.selector: Invalid value: {}: field is immutable, spec.template.metadata.labels: Invalid value: {}: `selector` does not match template `labels`]"#;
        assert_eq!(immutable_field(two), None, "not only an immutable field");
        let said = explain("Job", "spec.template");
        assert!(said.contains(REPLACE) && said.starts_with("spec.template: field is immutable"));
    }

    #[test]
    fn only_a_true_annotation_opts_in() {
        let with = |v: Json| json!({"metadata": {"annotations": {REPLACE: v}}});
        assert!(opted_in(&with(json!("true"))));
        assert!(opted_in(&with(json!("True"))));
        assert!(!opted_in(&with(json!("false"))));
        assert!(!opted_in(&with(json!(true))), "annotations are strings");
        assert!(!opted_in(&json!({"metadata": {}})));
    }
}
