//! The policy files the repository ships: the deploy examples (the Kubernetes one inside its
//! ConfigMap), for the tests that check them against the units, the manifests and the schema.

use std::path::{Path, PathBuf};

/// A file under deploy/: its path and text.
pub fn deploy(rel: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (path, text)
}

/// The block scalar `KEY: |` of a YAML file, dedented (enough for the ConfigMap's one file).
pub fn yaml_block(text: &str, key: &str) -> String {
    let mut lines = text.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no `{key}: |` block"));
    let indent = header.len() - header.trim_start().len() + 2;
    lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The ConfigMap that holds the Kubernetes example policy, and the policy's text.
pub const KUBERNETES_CONFIGMAP: &str = "kubernetes/common/configmap.yaml";

pub fn kubernetes_policy() -> (PathBuf, String) {
    let (path, configmap) = deploy(KUBERNETES_CONFIGMAP);
    (path, yaml_block(&configmap, "config.toml"))
}
