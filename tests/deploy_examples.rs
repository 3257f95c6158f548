//! The example policies under deploy/ are valid, and agree with the files that run them: the paths
//! they read credentials and state from are the ones the systemd units and Kubernetes manifests
//! provide, and the daemon's shutdown timeout fits inside the stop timeouts. No server needed;
//! the units and manifests themselves are linted by scripts/check-deploy.sh.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

mod common;

use common::policies::{deploy, kubernetes_policy, yaml_block};
use zenml_rotator::config::{Config, StoreSettings, VaultAuth, ZenmlAuth};
use zenml_rotator::secret::SecretSource;

fn parse(source: &str, path: &Path) -> Config {
    Config::parse(source, path).unwrap_or_else(|e| panic!("{} is invalid:\n{e}", path.display()))
}

/// Every value of `key: value` lines (comments and quotes stripped).
fn yaml_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .map(str::trim_start)
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.trim_start_matches("- "))
        .filter_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .collect()
}

/// The text with the commented-out settings `keys` (`# key = value`) switched on.
fn uncommented(text: &str, keys: &[&str]) -> String {
    text.lines()
        .map(|l| {
            let setting = l.trim_start().strip_prefix("# ").unwrap_or_default();
            if keys.iter().any(|k| setting.starts_with(&format!("{k} = "))) {
                l.replacen("# ", "", 1)
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every value of `Key=` in a unit file, in order.
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim().to_owned())
        .collect()
}

fn seconds(v: &str) -> u64 {
    humantime::parse_duration(v)
        .unwrap_or_else(|e| panic!("{v:?} is not a duration: {e}"))
        .as_secs()
}

fn file_source(s: &SecretSource) -> &Path {
    match s {
        SecretSource::File(p) => p,
        SecretSource::Env(name) => panic!("expected a *_file credential, found env {name}"),
    }
}

const POD_MANIFESTS: [&str; 2] = [
    "kubernetes/daemon/deployment.yaml",
    "kubernetes/cronjob/cronjob.yaml",
];

#[test]
fn the_kubernetes_policy_is_valid_and_matches_the_pods() {
    let (path, policy) = kubernetes_policy();
    let config = parse(&policy, &path);

    let listen: SocketAddr = config.metrics.listen;
    assert!(
        listen.ip().is_unspecified(),
        "the kubelet's probes and Prometheus reach the pod IP: listen on all interfaces, not {listen}"
    );
    let ZenmlAuth::Password { password, .. } = &config.zenml.auth else {
        panic!("the example logs in with a password file")
    };
    let password = file_source(password);
    let vault_jwt = config
        .stores
        .values()
        .find_map(|s| match s {
            StoreSettings::Vault(v) => match &v.auth {
                VaultAuth::Kubernetes { jwt_file, .. } => Some(jwt_file.clone()),
                _ => None,
            },
            _ => None,
        })
        .expect("the example uses Vault kubernetes auth");

    for rel in POD_MANIFESTS {
        let (_, pod) = deploy(rel);
        let mounts = yaml_values(&pod, "mountPath");
        // The state directory is one the rotator creates 0700 inside the volume: a volume's root
        // has the mode its provisioner and fsGroup give it, which the rotator would refuse.
        let state = config.state.dir.as_path();
        assert!(
            mounts.iter().any(|m| state.parent() == Some(Path::new(m))),
            "{rel}: state.dir {} is not a directory directly inside a mountPath ({mounts:?})",
            state.display()
        );
        for (what, file) in [
            ("password_file's directory", password.parent().unwrap()),
            ("jwt_file's directory", vault_jwt.parent().unwrap()),
            ("the policy's directory", Path::new("/etc/zenml-rotator")),
        ] {
            assert!(
                mounts.iter().any(|m| Path::new(m) == file),
                "{rel}: {what} {} is not a mountPath ({mounts:?})",
                file.display()
            );
        }
        assert!(
            yaml_values(&pod, "args")
                .iter()
                .any(|a| a.contains("/etc/zenml-rotator/config.toml")),
            "{rel}: the container must read the ConfigMap's config.toml"
        );
        assert!(
            yaml_values(&pod, "path").contains(
                &vault_jwt
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            ),
            "{rel}: the projected token's path must be the jwt_file's name"
        );
        let grace: Vec<u64> = yaml_values(&pod, "terminationGracePeriodSeconds")
            .iter()
            .map(|v| v.parse().unwrap())
            .collect();
        assert_eq!(grace.len(), 1, "{rel}: one terminationGracePeriodSeconds");
        assert!(
            Duration::from_secs(grace[0]) > config.daemon.shutdown_timeout,
            "{rel}: SIGKILL would come before the rotation in flight may finish"
        );
    }

    let (_, deployment) = deploy(POD_MANIFESTS[0]);
    let port = listen.port().to_string();
    assert_eq!(
        yaml_values(&deployment, "containerPort"),
        std::slice::from_ref(&port)
    );
    assert_eq!(yaml_values(&deployment, "prometheus.io/port"), [port]);
    // Two daemons share the keys through their claims; rollouts may overlap for the same reason.
    assert_eq!(yaml_values(&deployment, "replicas"), ["2"]);
    assert_eq!(
        yaml_values(&deployment, "type"),
        ["RollingUpdate", "RuntimeDefault", "RuntimeDefault"]
    );
    let (_, cronjob) = deploy(POD_MANIFESTS[1]);
    assert_eq!(yaml_values(&cronjob, "concurrencyPolicy"), ["Forbid"]);
}

#[test]
fn the_systemd_policy_is_valid_and_matches_the_units() {
    let (path, source) = deploy("systemd/config.toml");
    let config = parse(&source, &path);
    let (_, daemon) = deploy("systemd/zenml-rotator.service");
    let (_, oneshot) = deploy("systemd/zenml-rotator-once.service");

    // The credential files are bare ids, read from the unit's credentials directory (%d), which
    // the units load (the unit file itself, or the drop-ins its comments name).
    let ZenmlAuth::Password { password, .. } = &config.zenml.auth else {
        panic!("the example logs in with a password file")
    };
    let mut files = vec![file_source(password).to_path_buf()];
    for store in config.stores.values() {
        if let StoreSettings::Vault(v) = store
            && let VaultAuth::AppRole {
                role_id, secret_id, ..
            } = &v.auth
        {
            files.push(file_source(role_id).to_path_buf());
            files.push(file_source(secret_id).to_path_buf());
        }
    }
    for file in &files {
        assert_eq!(
            file.components().count(),
            1,
            "{}: not a bare credential id",
            file.display()
        );
        let id = file.file_name().unwrap().to_string_lossy();
        let line = format!("LoadCredential={id}:/etc/zenml-rotator/credentials/{id}");
        assert!(
            daemon.lines().any(|l| l.trim_start_matches("#   ") == line),
            "zenml-rotator.service neither loads nor documents {line}"
        );
    }
    // The policy itself is root-only (0640, the package's conffile): the units read the copy
    // systemd hands them, and a reload checks the file that copy is made from.
    for unit in [&daemon, &oneshot] {
        assert_eq!(
            unit_values(unit, "LoadCredential"),
            [
                "config.toml:/etc/zenml-rotator/config.toml",
                "zenml-password:/etc/zenml-rotator/credentials/zenml-password"
            ]
        );
    }
    assert_eq!(
        unit_values(&daemon, "ExecReload"),
        [
            "+/usr/bin/zenml-rotator check -c ${CONFIGURATION_DIRECTORY}/config.toml",
            "+/usr/bin/systemctl --no-block restart %n"
        ]
    );

    // The sandbox lets the rotator write only to its StateDirectory=.
    for unit in [&daemon, &oneshot] {
        assert_eq!(unit_values(unit, "StateDirectory"), ["zenml-rotator"]);
        assert_eq!(unit_values(unit, "ProtectSystem"), ["strict"]);
        // A core dump would hold key values.
        assert_eq!(unit_values(unit, "LimitCORE"), ["0"]);
        assert_eq!(
            unit_values(unit, "ConfigurationDirectory"),
            ["zenml-rotator"]
        );
        assert!(unit_values(unit, "ExecStart")[0].ends_with("-c %d/config.toml"));
        let stop = seconds(&unit_values(unit, "TimeoutStopSec")[0]);
        assert!(
            Duration::from_secs(stop) > config.daemon.shutdown_timeout,
            "TimeoutStopSec must leave the rotation in flight its shutdown_timeout"
        );
    }
    let state = Path::new("/var/lib/zenml-rotator");
    for store in config.stores.values() {
        if let StoreSettings::File(f) = store {
            assert!(
                f.dir.starts_with(state),
                "file store {} is outside the writable StateDirectory",
                f.dir.display()
            );
        }
    }
    assert_eq!(unit_values(&daemon, "Type"), ["notify"]);
    assert_eq!(unit_values(&oneshot, "Type"), ["oneshot"]);
    let (_, timer) = deploy("systemd/zenml-rotator.timer");
    assert_eq!(unit_values(&timer, "Unit"), ["zenml-rotator-once.service"]);
    assert_eq!(unit_values(&timer, "Persistent"), ["true"]);
}

/// The URLs the examples offer, switched on, follow the cleartext rule: https, or an http one
/// allowed with `allow_insecure_http` (and then counted).
#[test]
fn the_pushgateway_the_examples_offer_is_valid_when_switched_on() {
    let keys = ["pushgateway", "allow_insecure_http"];
    let (path, configmap) = deploy("kubernetes/common/configmap.yaml");
    let k8s = uncommented(&yaml_block(&configmap, "config.toml"), &keys);
    let config = parse(&k8s, &path);
    let url = config.metrics.pushgateway.as_deref().unwrap();
    assert!(url.starts_with("http://"), "{url}");
    assert_eq!(config.insecure_endpoints.len(), 1);
    assert_eq!(config.insecure_endpoints[0].field, "metrics.pushgateway");
    // Without the explicit allowance, the in-cluster http URL is refused.
    let refused = uncommented(&yaml_block(&configmap, "config.toml"), &keys[..1]);
    let err = Config::parse(&refused, &path).unwrap_err();
    assert_eq!(err.diagnostics().len(), 1, "{err}");
    assert_eq!(err.diagnostics()[0].field, "metrics.pushgateway");

    let (path, systemd) = deploy("systemd/config.toml");
    let config = parse(&uncommented(&systemd, &keys[..1]), &path);
    let url = config.metrics.pushgateway.as_deref().unwrap();
    assert!(url.starts_with("https://"), "{url}");
    assert!(config.insecure_endpoints.is_empty());
}

/// No example sends anything in clear text beyond loopback as shipped.
#[test]
fn the_example_policies_use_https() {
    for (rel, text) in [
        ("systemd/config.toml", deploy("systemd/config.toml").1),
        (
            "kubernetes/common/configmap.yaml",
            yaml_block(&deploy("kubernetes/common/configmap.yaml").1, "config.toml"),
        ),
    ] {
        let config = parse(&text, Path::new(rel));
        assert!(config.insecure_endpoints.is_empty(), "{rel}");
        assert!(config.zenml.url.starts_with("https://"), "{rel}");
        for store in config.stores.values() {
            if let StoreSettings::Vault(v) = store {
                assert!(v.address.starts_with("https://"), "{rel}");
            }
        }
    }
}
