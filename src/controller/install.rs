//! The controller's own install manifests: the lockstep project under `templates/` of the source
//! tree, built into the binary so `lockstep install` renders them anywhere.

use crate::source::Snapshot;

/// The project's files (path relative to `templates/`, text).
pub const FILES: [(&str, &str); 7] = [
    (
        "lockstep.yaml",
        include_str!("../../templates/lockstep.yaml"),
    ),
    ("values.yaml", include_str!("../../templates/values.yaml")),
    (
        "manifests/crd-sync.yaml",
        include_str!("../../templates/manifests/crd-sync.yaml"),
    ),
    (
        "manifests/crd-synchistory.yaml",
        include_str!("../../templates/manifests/crd-synchistory.yaml"),
    ),
    (
        "templates/namespace.yaml",
        include_str!("../../templates/templates/namespace.yaml"),
    ),
    (
        "templates/rbac.yaml",
        include_str!("../../templates/templates/rbac.yaml"),
    ),
    (
        "templates/deployment.yaml",
        include_str!("../../templates/templates/deployment.yaml"),
    ),
];

/// The environment the install project defines.
pub const ENVIRONMENT: &str = "default";

/// The install project as a snapshot, ready to render.
pub fn snapshot() -> Snapshot {
    let mut s = Snapshot::new();
    for (path, text) in FILES {
        s.insert(path, text.as_bytes());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn every_file_of_the_install_project_is_built_in() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let on_disk = Snapshot::read_dir(&root).expect("templates/ reads");
        let built_in = snapshot();
        let names = |s: &Snapshot| s.under("").map(|(p, _)| p.to_string()).collect::<Vec<_>>();
        assert_eq!(names(&on_disk), names(&built_in));
    }
}
