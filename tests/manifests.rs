//! Every document in `manifests/` parses with the k8s-openapi types and survives a round trip
//! through them unchanged (so a misspelled or misplaced field fails here, not in a cluster),
//! and the deployment keeps the properties the design asks for: least-privilege RBAC, the
//! ingress-node DaemonSet's security and lifecycle settings, a valid config in the ConfigMap.

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::IngressClass;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::Deserialize;
use serde_json::Value;

/// Every document of every manifest file: (file, kind, JSON).
fn documents() -> Vec<(String, String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if value.is_null() {
                continue;
            }
            let kind = value["kind"].as_str().unwrap_or("").to_string();
            out.push((name.clone(), kind, value));
        }
    }
    out
}

/// Drops nulls and empty objects the typed serializer leaves out anyway.
fn normalize(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), normalize(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(normalize).collect()),
        other => other.clone(),
    }
}

/// Parses `value` as `T` and checks the round trip loses nothing.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(file: &str, value: &Value) -> T {
    let t: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{file}: {}: {e}", value["kind"]));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        normalize(&back),
        normalize(value),
        "{file}: {} {} has fields the k8s-openapi type does not know (misspelled or misplaced?)",
        value["kind"],
        value["metadata"]["name"]
    );
    t
}

#[test]
fn every_manifest_parses_with_the_kubernetes_types() {
    let mut kinds = BTreeSet::new();
    for (file, kind, v) in documents() {
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(&file, &v)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(&file, &v)),
            "ClusterRole" => drop(typed::<ClusterRole>(&file, &v)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(&file, &v)),
            "Role" => drop(typed::<Role>(&file, &v)),
            "RoleBinding" => drop(typed::<RoleBinding>(&file, &v)),
            "IngressClass" => drop(typed::<IngressClass>(&file, &v)),
            "ConfigMap" => drop(typed::<ConfigMap>(&file, &v)),
            "DaemonSet" => drop(typed::<DaemonSet>(&file, &v)),
            "Service" => drop(typed::<Service>(&file, &v)),
            "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(&file, &v)),
            other => panic!("{file}: no test knows kind {other:?}; add it here"),
        }
        kinds.insert(kind);
    }
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "IngressClass",
        "ConfigMap",
        "DaemonSet",
        "Service",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(k), "no {k} in manifests/");
    }
}

fn one<T: serde::de::DeserializeOwned + serde::Serialize>(kind: &str) -> T {
    let (file, _, v) = documents()
        .into_iter()
        .find(|(_, k, _)| k == kind)
        .unwrap_or_else(|| panic!("no {kind}"));
    typed(&file, &v)
}

#[test]
fn rbac_grants_what_the_controller_calls_and_nothing_more() {
    let role: ClusterRole = one("ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        for group in rule.api_groups.unwrap_or_default() {
            for res in rule.resources.clone().unwrap_or_default() {
                for verb in &rule.verbs {
                    assert_ne!(verb, "*", "no wildcard verbs");
                    assert_ne!(res, "*", "no wildcard resources");
                    granted.insert(format!("{group}/{res}:{verb}"));
                }
            }
        }
    }
    let needed: BTreeSet<String> = [
        "networking.k8s.io/ingresses:list",
        "networking.k8s.io/ingresses:watch",
        "networking.k8s.io/ingressclasses:list",
        "networking.k8s.io/ingressclasses:watch",
        "networking.k8s.io/ingresses/status:update",
        "networking.k8s.io/ingresses/status:patch",
        "/services:list",
        "/services:watch",
        "discovery.k8s.io/endpointslices:list",
        "discovery.k8s.io/endpointslices:watch",
        "/secrets:get",
        "/secrets:list",
        "/secrets:watch",
        "events.k8s.io/events:create",
        "events.k8s.io/events:patch",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(granted, needed);
    let lease: Role = one("Role");
    let verbs: BTreeSet<String> = lease
        .rules
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.resources.as_deref() == Some(&["leases".to_string()][..]))
        .flat_map(|r| r.verbs)
        .collect();
    assert_eq!(
        verbs,
        ["create", "get", "update"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    let binding: ClusterRoleBinding = one("ClusterRoleBinding");
    assert_eq!(binding.role_ref.name, "sluice", "never cluster-admin");
}

#[test]
fn the_daemonset_runs_on_ingress_nodes_unprivileged_and_drains() {
    let ds: DaemonSet = one("DaemonSet");
    let pod = ds.spec.template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.node_selector
            .unwrap()
            .get("node-role.kubernetes.io/ingress")
            .map(String::as_str),
        Some("true")
    );
    assert_eq!(pod.termination_grace_period_seconds, Some(300));
    assert_eq!(pod.service_account_name.as_deref(), Some("sluice"));
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    // A non-root process gets NET_BIND_SERVICE only from the binary's file capability,
    // which no_new_privs (allowPrivilegeEscalation: false) would make the kernel ignore.
    assert_eq!(sc.allow_privilege_escalation, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_BIND_SERVICE".to_string()][..])
    );
    let probe_port = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        let get = p.as_ref().unwrap().http_get.as_ref().unwrap();
        (
            get.path.clone().unwrap(),
            serde_json::to_value(&get.port).unwrap(),
        )
    };
    assert_eq!(
        probe_port(&c.liveness_probe),
        ("/healthz".into(), serde_json::json!(10254))
    );
    assert_eq!(
        probe_port(&c.readiness_probe),
        ("/readyz".into(), serde_json::json!(10254))
    );
    // The SLB's health check needs time to see the node go (the shutdown delay, in Sluice
    // itself: a preStop sleep action is refused by API servers before 1.30), and the delay
    // plus the drain must fit in the grace period.
    let cm: ConfigMap = one("ConfigMap");
    let toml = cm.data.unwrap()["sluice.toml"].clone();
    let config = sluice::config::Config::parse(&toml, "30-configmap.yaml").unwrap();
    assert!(config.shutdown_delay >= std::time::Duration::from_secs(10));
    let grace = pod.termination_grace_period_seconds.unwrap() as u64;
    assert!(config.shutdown_delay.as_secs() + config.shutdown_grace.as_secs() < grace);
    assert!(config.kubernetes.enabled);
    let svc: Service = one("Service");
    assert_eq!(
        config.kubernetes.publish_service,
        Some((
            svc.metadata.namespace.clone().unwrap(),
            svc.metadata.name.clone().unwrap()
        ))
    );
    assert_eq!(svc.spec.unwrap().type_.as_deref(), Some("LoadBalancer"));
    let class: IngressClass = one("IngressClass");
    assert_eq!(
        class.spec.unwrap().controller.as_deref(),
        Some(config.compile.controller.as_str())
    );
    // The image is the one scripts/image.sh builds, tagged with the crate version.
    assert_eq!(
        c.image.as_deref(),
        Some(format!("localhost/sluice:{}", env!("CARGO_PKG_VERSION")).as_str())
    );
}

#[test]
fn the_seccomp_profile_allows_io_uring_and_reaches_the_node() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let json = std::fs::read_to_string(dir.join("seccomp/sluice-io-uring.json")).unwrap();
    let profile: Value = serde_json::from_str(&json).unwrap();
    let allowed: BTreeSet<&str> = profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
        .flat_map(|r| r["names"].as_array().unwrap().iter())
        .map(|n| n.as_str().unwrap())
        .collect();
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(allowed.contains(call), "{call} not allowed");
    }
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    // The ConfigMap the init container copies from carries exactly the file's bytes.
    let cm: ConfigMap = documents()
        .into_iter()
        .find(|(_, k, v)| k == "ConfigMap" && v["metadata"]["name"] == "sluice-seccomp")
        .map(|(f, _, v)| typed(&f, &v))
        .expect("ConfigMap sluice-seccomp");
    assert_eq!(cm.data.unwrap()["io-uring.json"], json);
    // The sluice container runs under it, by the path the init container writes.
    let ds: DaemonSet = one("DaemonSet");
    let pod = ds.spec.template.spec.unwrap();
    let sc = pod.containers[0].security_context.clone().unwrap();
    let seccomp = sc.seccomp_profile.unwrap();
    assert_eq!(seccomp.type_, "Localhost");
    assert_eq!(
        seccomp.localhost_profile.as_deref(),
        Some("sluice/io-uring.json")
    );
    let init = &pod.init_containers.unwrap()[0];
    let script = init.command.as_ref().unwrap().join(" ");
    assert!(
        script.contains("/host-seccomp/sluice/io-uring.json"),
        "{script}"
    );
    let host = pod
        .volumes
        .unwrap()
        .into_iter()
        .find_map(|v| v.host_path)
        .unwrap();
    assert_eq!(host.path, "/var/lib/kubelet/seccomp");
}
