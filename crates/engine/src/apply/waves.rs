//! Waves: order declared on the objects themselves. `lockstep.dev/wave: "N"` (or Argo CD's
//! `argocd.argoproj.io/sync-wave`, read as the same thing) puts an object in wave N (0 when
//! unset; negative waves come first). Waves apply in ascending order, each waited healthy
//! before the next; prune deletes in the reverse order. Namespaces and CRDs are applied before
//! every wave whatever their annotation: the whole set's dry run needs them first.

use serde_json::Value as Json;

/// lockstep's wave annotation.
pub const WAVE: &str = "lockstep.dev/wave";
/// Argo CD's wave annotation, read as [`WAVE`].
pub const ARGO_WAVE: &str = "argocd.argoproj.io/sync-wave";

/// The wave of an object (0 when unset), or why its annotations do not give one.
pub fn wave_of(body: &Json) -> Result<i64, String> {
    let annotations = &body["metadata"]["annotations"];
    let read = |key: &str| -> Result<Option<i64>, String> {
        match &annotations[key] {
            Json::Null => Ok(None),
            Json::String(s) => s.trim().parse::<i64>().map(Some).map_err(|_| {
                format!("annotation {key}: {s:?} is not a whole number (waves are integers, lower first, 0 when unset)")
            }),
            other => Err(format!(
                "annotation {key}: {other} is not a string; write it quoted, e.g. {key}: \"1\""
            )),
        }
    };
    match (read(WAVE)?, read(ARGO_WAVE)?) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "annotation {WAVE} is {a} but {ARGO_WAVE} is {b}: give one of them, or the same wave in both"
        )),
        (Some(w), _) | (None, Some(w)) => Ok(w),
        (None, None) => Ok(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn annotated(a: Json) -> Json {
        json!({"metadata": {"annotations": a}})
    }

    #[test]
    fn waves_read_from_either_annotation_and_default_to_zero() {
        assert_eq!(wave_of(&json!({"metadata": {}})), Ok(0));
        assert_eq!(wave_of(&annotated(json!({WAVE: "2"}))), Ok(2));
        assert_eq!(wave_of(&annotated(json!({ARGO_WAVE: "-1"}))), Ok(-1));
        assert_eq!(
            wave_of(&annotated(json!({WAVE: " 3", ARGO_WAVE: "3"}))),
            Ok(3)
        );
    }

    #[test]
    fn waves_that_disagree_or_are_not_numbers_are_refused_with_the_annotation() {
        let e = wave_of(&annotated(json!({WAVE: "1", ARGO_WAVE: "2"}))).unwrap_err();
        assert!(e.contains(WAVE) && e.contains(ARGO_WAVE), "{e}");
        let e = wave_of(&annotated(json!({WAVE: "first"}))).unwrap_err();
        assert!(e.contains("\"first\" is not a whole number"), "{e}");
        let e = wave_of(&annotated(json!({ARGO_WAVE: 5}))).unwrap_err();
        assert!(e.contains("not a string"), "{e}");
    }
}
