//! The Kubernetes source against a real API server (kube-apiserver v1.28 + etcd from
//! `../shared/k8s/`, which CI starts and exports as `SLUICE_TEST_KUBECONFIG`): pods live in a
//! network namespace the test makes (a real API server refuses loopback endpoint addresses),
//! traffic goes through Sluice's real engine to them. Without the variable a test says it was
//! skipped (and fails in CI):
//!
//! ```sh
//! export SLUICE_TEST_KUBECONFIG=$(../shared/k8s/up.sh)
//! cargo test --test k8s_real
//! ```
//!
//! Needs root (network namespaces). The tests that stop the API server or need other flags
//! (outage, 410 Gone) start a private instance of their own on other ports.
// Wall-clock instants only bound waits; nothing here asserts on speed.
#![allow(clippy::disallowed_methods)]

mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::real_flow::{
    DeadServer, Load, Pods, PrivateApi, Replica, SluiceProcess, StatusRecorder, World, answer,
    apply_object, endpoints, real_kubeconfig, service, settings, token_kubeconfig, within,
    yaml_documents,
};

#[test]
fn routes_status_and_endpoints_follow_a_real_api_server() {
    let Some(kubeconfig) = real_kubeconfig("routes_status_and_endpoints_follow_a_real_api_server")
    else {
        return;
    };
    support::real_flow::run(&kubeconfig);
}

/// `down.sh` for `SLUICE_OUTAGE_SECS` (60 s by default; longer by hand) under steady load, then
/// `up.sh`: no request fails, the Lease holder stops leading once it cannot renew, the control
/// thread does not spin and knocks on the dead server's port only a few times a second, and a
/// change made once the server is back is served within 5 s.
#[test]
fn an_api_outage_fails_no_request_and_later_changes_are_served_within_5_s() {
    let test = "an_api_outage_fails_no_request_and_later_changes_are_served_within_5_s";
    if real_kubeconfig(test).is_none() {
        return;
    }
    let outage = Duration::from_secs(
        std::env::var("SLUICE_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let mut api = PrivateApi::start("outage", 16443, "");
    let world = World::new(&api.kubeconfig, "outage");
    let mut pods = Pods::new();
    let a = pods.spawn("pod-a");
    let b = pods.spawn("pod-b");
    world.create_all(&[
        service("web"),
        endpoints("web-1", "web", &[(a, true, true, false)]),
        world.ingress("web", "a.test", "web"),
    ]);
    let r = Replica::start(
        settings(&api.kubeconfig, &world, "one"),
        Duration::from_secs(60),
    );
    within(Duration::from_secs(15), "a.test served by pod-a", || {
        answer(r.addr(), "a.test") == "pod-a"
    });
    within(Duration::from_secs(15), "status written", || {
        world.lb_ips("web") == ["192.0.2.10"]
    });
    assert!(r.stats.leader.load(Ordering::Relaxed));
    let load = Load::start(r.addr(), "a.test", &["pod-a", "pod-b"], 100);

    api.down();
    let dead = DeadServer::start(api.port);
    let (cpu0, start) = (r.control_cpu(), Instant::now());
    // Past the renew deadline (10 s) the holder has stepped down: from then on it attempts
    // no status write at all (each attempt ends as an update or an error).
    let writes = || {
        r.stats.status_updates.load(Ordering::Relaxed)
            + r.stats.status_errors.load(Ordering::Relaxed)
    };
    std::thread::sleep(outage.min(Duration::from_secs(15)));
    let leading_mid = r.stats.leader.load(Ordering::Relaxed);
    let writes_mid = writes();
    let (knocks_mid, mid) = (dead.count(), start.elapsed());
    std::thread::sleep(outage.saturating_sub(start.elapsed()));
    let (cpu, secs) = (r.control_cpu() - cpu0, start.elapsed().as_secs_f64());
    let knocks = dead.stop();
    // The steady rate, once every backoff has grown (the first seconds retry faster).
    let steady = (knocks - knocks_mid) as f64 / (secs - mid.as_secs_f64()).max(1.0);
    let served_during = load.ok.load(Ordering::Relaxed);
    let leading_after = r.stats.leader.load(Ordering::Relaxed);
    let status_writes = r.stats.status_updates.load(Ordering::Relaxed);
    let writes_after = writes();

    api.up();
    // Changes made once the server is back (the test's client retries its first request,
    // whose pooled connection died with the server).
    within(
        Duration::from_secs(10),
        "the test's own writes work",
        || {
            world
                .rt
                .block_on(world.apply_async(world.ingress("later", "later.test", "web")))
                .is_ok()
        },
    );
    world.apply(endpoints("web-1", "web", &[(b, true, true, false)]));
    let took = within(Duration::from_secs(5), "later.test served by pod-b", || {
        answer(r.addr(), "later.test") == "pod-b"
    });
    within(
        Duration::from_secs(20),
        "leading again, status of later",
        || world.lb_ips("later") == ["192.0.2.10"],
    );
    let failures = load.failures.lock().unwrap().clone();
    let (ok, failed) = load.stop();
    println!(
        "outage {secs:.0} s: {ok} requests ok ({served_during} by the end of the outage), \
         {failed} failed {failures:?}; control thread CPU {:.3} s ({:.2} % of a core); \
         {knocks} connections to the dead API port ({:.2}/s; {steady:.2}/s after the first \
         {mid:.0?}); status writes before/after the outage {status_writes}; a change after \
         up.sh served in {took:?}",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() * 100.0 / secs,
        knocks as f64 / secs,
    );
    assert_eq!(failed, 0, "requests failed during the outage: {failures:?}");
    assert!(
        !leading_after,
        "a holder that lost the API server stopped leading"
    );
    if outage >= Duration::from_secs(15) {
        assert!(!leading_mid, "stepped down within the renew deadline");
        assert_eq!(
            writes_mid, writes_after,
            "no status write attempted once stepped down"
        );
    }
    assert!(
        outage < Duration::from_secs(30) || steady < 5.0,
        "{steady:.2} connections/s to a dead server: hammering it"
    );
    assert!(
        cpu.as_secs_f64() / secs < 0.05,
        "control thread used {cpu:?} in {secs:.0} s: a busy loop"
    );
    r.stop();
}

/// A private API server with the watch cache off and etcd compacted every 10 s; Sluice's
/// watches end every 5 s (`timeoutSeconds`) and resume from their resourceVersion, which soon
/// is compacted away: the API server answers 410 Gone, the watchers re-list. Under steady load
/// no request fails (the routes never go empty while the new list comes in), and changes are
/// followed afterwards.
#[test]
fn watches_expired_by_compaction_relist_without_a_failed_request() {
    let test = "watches_expired_by_compaction_relist_without_a_failed_request";
    if real_kubeconfig(test).is_none() {
        return;
    }
    let api = PrivateApi::start(
        "gone",
        17443,
        "--watch-cache=false --etcd-compaction-interval=10s",
    );
    let world = World::new(&api.kubeconfig, "gone");
    let mut pods = Pods::new();
    let a = pods.spawn("pod-a");
    let b = pods.spawn("pod-b");
    world.create_all(&[
        service("web"),
        endpoints("web-1", "web", &[(a, true, true, false)]),
        world.ingress("web", "a.test", "web"),
    ]);
    let mut s = settings(&api.kubeconfig, &world, "one");
    s.watch_timeout = Some(5);
    let r = Replica::start(s, Duration::from_secs(60));
    within(Duration::from_secs(15), "a.test served by pod-a", || {
        answer(r.addr(), "a.test") == "pod-a"
    });
    let load = Load::start(r.addr(), "a.test", &["pod-a"], 100);
    // The Lease renewals (every 2 s) move etcd's revision on; nothing we watch changes.
    let took = within(Duration::from_secs(90), "a 410 Gone and a re-list", || {
        r.stats.gone.load(Ordering::Relaxed) >= 1 && r.stats.relists.load(Ordering::Relaxed) >= 1
    });
    // Let the other kinds' watchers expire too, still under load.
    std::thread::sleep(Duration::from_secs(10));
    let failures = load.failures.lock().unwrap().clone();
    let (ok, failed) = load.stop();
    let (gone, relists) = (
        r.stats.gone.load(Ordering::Relaxed),
        r.stats.relists.load(Ordering::Relaxed),
    );
    println!(
        "410 Gone: first after {took:?}; {gone} expired watches, {relists} re-lists; \
         {ok} requests ok, {failed} failed {failures:?}"
    );
    assert_eq!(failed, 0, "requests failed while re-listing: {failures:?}");
    // The re-listed watchers still follow changes.
    world.apply(endpoints("web-1", "web", &[(b, true, true, false)]));
    world.apply(world.ingress("later", "later.test", "web"));
    within(
        Duration::from_secs(15),
        "later.test served by pod-b",
        || answer(r.addr(), "later.test") == "pod-b",
    );
    r.stop();
}

/// Two `sluice` processes elect a status writer with the Lease: only the holder writes
/// status (the other's counter stays 0); SIGTERM of the holder gives the Lease back, and the
/// other takes it within the renew deadline (10 s); the Ingress status is never changed
/// along the way (no flap), and the new holder writes the status of an Ingress made after.
#[test]
fn two_processes_hand_the_lease_over_on_sigterm_without_flapping_status() {
    let test = "two_processes_hand_the_lease_over_on_sigterm_without_flapping_status";
    let Some(kubeconfig) = real_kubeconfig(test) else {
        return;
    };
    let world = World::new(&kubeconfig, "lease");
    let mut pods = Pods::new();
    let a = pods.spawn("pod-a");
    world.create_all(&[
        service("web"),
        endpoints("web-1", "web", &[(a, true, true, false)]),
        world.ingress("web", "a.test", "web"),
    ]);
    let first = SluiceProcess::start(&kubeconfig, &world, "sluice-a", 18080);
    within(Duration::from_secs(30), "sluice-a leads", || {
        first.metric("sluice_kube_leader") == 1
    });
    let second = SluiceProcess::start(&kubeconfig, &world, "sluice-b", 18090);
    within(Duration::from_secs(30), "both serve a.test", || {
        answer(first.http, "a.test") == "pod-a" && answer(second.http, "a.test") == "pod-a"
    });
    within(Duration::from_secs(15), "status written", || {
        world.lb_ips("web") == ["192.0.2.10"]
    });
    let recorder = StatusRecorder::start(&kubeconfig, &world.ns, "web");
    // A few renewals: the follower neither leads nor writes.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(second.metric("sluice_kube_leader"), 0);
    assert_eq!(second.metric("sluice_kube_status_updates_total"), 0);
    assert!(first.metric("sluice_kube_status_updates_total") >= 1);

    let start = Instant::now();
    first.signal(libc::SIGTERM);
    let handover = within(Duration::from_secs(10), "sluice-b takes the Lease", || {
        second.metric("sluice_kube_leader") == 1
    });
    let lease: k8s_openapi::api::coordination::v1::Lease = world
        .rt
        .block_on(kube::Api::namespaced(world.client.clone(), &world.ns).get("sluice-leader"))
        .unwrap();
    let holder = lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("sluice-b"));
    let mut first = first;
    let code = first.child.wait().unwrap().code();
    let exited = start.elapsed();
    world.apply(world.ingress("later", "later.test", "web"));
    within(
        Duration::from_secs(15),
        "the new holder writes later's status",
        || world.lb_ips("later") == ["192.0.2.10"],
    );
    std::thread::sleep(Duration::from_secs(2));
    let seen = recorder.stop();
    println!(
        "lease handover after SIGTERM: {handover:?} (holder exited {code:?} after {exited:?}); \
         statuses of web seen: {seen:?}; writes by the new holder: {}",
        second.metric("sluice_kube_status_updates_total")
    );
    assert_eq!(code, Some(0), "{}", first.log());
    assert_eq!(seen, vec![vec!["192.0.2.10".to_string()]], "status flapped");
    within(Duration::from_secs(5), "sluice-b serves later.test", || {
        answer(second.http, "later.test") == "pod-a"
    });
    let log = second.log();
    assert_eq!(second.stop(), Some(0), "{log}");
}

/// Events (events.k8s.io/v1) with reason `Rejected` about object `name` in `world`'s namespace.
fn rejected_events(world: &World, name: &str) -> usize {
    use k8s_openapi::api::events::v1::Event;
    let api: kube::Api<Event> = kube::Api::namespaced(world.client.clone(), &world.ns);
    world
        .rt
        .block_on(api.list(&Default::default()))
        .map(|l| {
            l.items
                .iter()
                .filter(|e| {
                    e.reason.as_deref() == Some("Rejected")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
                })
                .count()
        })
        .unwrap_or(0)
}

fn clear_status(world: &World, name: &str) {
    let api: kube::Api<k8s_openapi::api::networking::v1::Ingress> =
        kube::Api::namespaced(world.client.clone(), &world.ns);
    let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": null}}});
    world
        .rt
        .block_on(api.patch_status(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        ))
        .unwrap();
}

/// Sluice runs with a ServiceAccount token (TokenRequest API) bound exactly by
/// `manifests/10-rbac.yaml`: it lists, serves, leads, writes status and posts Events. Then each
/// rule is removed in turn (the rest applied as they are): the feature it grants breaks, and
/// the log names it (a "forbidden" line from the part that needs the rule).
#[test]
fn the_rbac_manifest_is_enough_and_every_rule_is_needed() {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::ServiceAccount;
    let test = "the_rbac_manifest_is_enough_and_every_rule_is_needed";
    let Some(kubeconfig) = real_kubeconfig(test) else {
        return;
    };
    let world = World::new(&kubeconfig, "rbac");
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
    let read = |f: &str| yaml_documents(&std::fs::read_to_string(manifests.join(f)).unwrap());
    let rbac = read("10-rbac.yaml");
    let apply = |objects: &[serde_json::Value]| {
        for o in objects {
            world
                .rt
                .block_on(apply_object(&world.client, o, false))
                .unwrap();
        }
    };
    apply(&read("00-namespace.yaml"));
    apply(&rbac);
    let sa: kube::Api<ServiceAccount> = kube::Api::namespaced(world.client.clone(), "sluice");
    let request: TokenRequest =
        serde_json::from_value(serde_json::json!({"spec": {"expirationSeconds": 3600}})).unwrap();
    let answered = world
        .rt
        .block_on(sa.create_token_request("sluice", &Default::default(), &request))
        .unwrap();
    let token = serde_json::to_value(&answered).unwrap()["status"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let sa_kubeconfig =
        std::env::temp_dir().join(format!("s13-{}-sa.kubeconfig", std::process::id()));
    token_kubeconfig(&kubeconfig, &token, &sa_kubeconfig);

    let mut pods = Pods::new();
    let a = pods.spawn("pod-a");
    world.create_all(&[
        service("web"),
        endpoints("web-1", "web", &[(a, true, true, false)]),
        world.ingress("web", "a.test", "web"),
        // Valid for the API server, rejected by Sluice (no such Service): an Event.
        world.ingress("bad", "bad.test", "nope"),
    ]);
    let election = format!("s13-rbac-{}", std::process::id());
    let run = |name: &str| {
        SluiceProcess::start_with(&sa_kubeconfig, &world, name, 18100, "sluice", &election)
    };

    // The whole role: everything works, nothing is forbidden.
    let p = run("sluice-rbac");
    within(Duration::from_secs(30), "serves a.test", || {
        answer(p.http, "a.test") == "pod-a"
    });
    within(Duration::from_secs(15), "leads, writes status", || {
        world.lb_ips("web") == ["192.0.2.10"]
    });
    within(
        Duration::from_secs(15),
        "posts an Event for the rejected Ingress",
        || rejected_events(&world, "bad") >= 1,
    );
    let log = p.log();
    assert_eq!(p.stop(), Some(0));
    assert!(!log.contains("forbidden"), "{log}");

    // Without each rule: (role, rule index, the feature, what the log says).
    let role_index = rbac
        .iter()
        .position(|o| o["kind"] == "ClusterRole")
        .unwrap();
    let lease_index = rbac.iter().position(|o| o["kind"] == "Role").unwrap();
    let cases: &[(usize, usize, &str, &str)] = &[
        (
            role_index,
            0,
            "listing Ingresses and IngressClasses",
            "watcher=IngressClass ",
        ),
        (
            role_index,
            1,
            "writing Ingress status",
            "cannot update the status of an Ingress",
        ),
        (role_index, 2, "listing Services", "watcher=Service "),
        (
            role_index,
            3,
            "listing EndpointSlices",
            "watcher=EndpointSlice ",
        ),
        (role_index, 4, "reading TLS Secrets", "watcher=Secret "),
        (role_index, 5, "posting Events", "cannot post an Event"),
        (
            lease_index,
            0,
            "the status Lease",
            &format!("lease={election} "),
        ),
    ];
    assert_eq!(
        rbac[role_index]["rules"].as_array().unwrap().len(),
        6,
        "a rule was added to the ClusterRole: add its case here"
    );
    let mut report = Vec::new();
    for (object, rule, feature, line) in cases {
        let mut less = rbac[*object].clone();
        less["rules"].as_array_mut().unwrap().remove(*rule);
        apply(&[less]);
        clear_status(&world, "web");
        let p = run("sluice-rbac");
        let found = within(Duration::from_secs(20), feature, || {
            p.log()
                .lines()
                .any(|l| l.contains(line) && l.contains("forbidden"))
        });
        let log = p.log();
        let shown = log
            .lines()
            .find(|l| l.contains(line) && l.contains("forbidden"))
            .unwrap_or("")
            .to_string();
        // The feature is really gone: a list that is refused never syncs (no admin server
        // yet), a refused status write leaves the status empty, a refused Lease never leads.
        match *feature {
            "writing Ingress status" | "the status Lease" => {
                assert!(world.lb_ips("web").is_empty(), "{feature}: status written");
            }
            "posting Events" => {}
            _ => assert_eq!(p.metric("sluice_kube_synced"), 0, "{feature}: synced"),
        }
        assert_eq!(p.stop(), Some(0), "{log}");
        apply(&[rbac[*object].clone()]);
        report.push(format!(
            "without rule {rule} ({feature}) after {found:?}: {shown}"
        ));
    }
    println!("{}", report.join("\n"));
}

/// Every object of every YAML under `manifests/` and of the fixtures meant to be valid is
/// accepted by the real API server (server-side apply with dry-run=server: schema,
/// validation and admission, nothing stored), so what a user applies cannot fail at apply
/// time. The fixture meant to be invalid for the API server is refused, with a reason.
#[test]
fn manifests_and_fixtures_pass_server_side_validation() {
    let test = "manifests_and_fixtures_pass_server_side_validation";
    let Some(kubeconfig) = real_kubeconfig(test) else {
        return;
    };
    let world = World::new(&kubeconfig, "validate");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    for fixture in [
        "basic",
        "classes",
        "conflicts",
        "default-class",
        "terminating",
    ] {
        files.push(root.join(format!("tests/fixtures/{fixture}.yaml")));
    }
    // Objects the real server refuses on purpose: (file, object, what it says).
    let must_refuse: &[(&str, &str, &str)] = &[
        // A relative path and an unknown pathType: the file source reports and skips those
        // paths; the server refuses the whole object, naming the fields.
        (
            "tests/fixtures/invalid.yaml",
            "mixed",
            "spec.rules[0].http.paths[1].path",
        ),
        // ingressClassName and a different legacy annotation: the class tests check what
        // Sluice does with an object made before this validation existed (or from files);
        // an API server since 1.18 refuses it.
        (
            "tests/fixtures/classes.yaml",
            "disagree",
            "must match `ingressClassName`",
        ),
    ];
    files.push(root.join("tests/fixtures/invalid.yaml"));
    let mut checked = 0;
    let mut problems = Vec::new();
    let mut reasons = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(root).unwrap().display().to_string();
        let objects = yaml_documents(&std::fs::read_to_string(file).unwrap());
        assert!(!objects.is_empty(), "{rel}");
        // Namespaces the objects live in exist for real (a dry run cannot create into a
        // namespace that is only dry-run created).
        for o in &objects {
            let ns = o["metadata"]["namespace"].as_str();
            if let Some(ns) = ns.filter(|ns| *ns != "default") {
                let object = serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns}});
                world
                    .rt
                    .block_on(apply_object(&world.client, &object, false))
                    .unwrap();
            }
        }
        for o in &objects {
            checked += 1;
            let name = o["metadata"]["name"].as_str().unwrap_or("");
            let result = world.rt.block_on(apply_object(&world.client, o, true));
            let expected = must_refuse.iter().find(|(f, n, _)| *f == rel && *n == name);
            match (result, expected) {
                (Ok(()), None) => {}
                (Ok(()), Some(_)) => problems.push(format!("{rel}: {name}: accepted")),
                (Err(e), Some((_, _, why))) if e.contains(why) => {
                    reasons.push(format!("{rel}: {name}: refused: {why}"));
                }
                (Err(e), _) => problems.push(format!("{rel}: {e}")),
            }
        }
    }
    for (file, name, _) in must_refuse {
        let seen = format!("{file}: {name}: refused");
        assert!(
            reasons.iter().any(|r| r.starts_with(&seen)),
            "not refused: {seen}"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    println!(
        "{checked} objects from {} files checked with dry-run=server; refused as expected:\n{}",
        files.len(),
        reasons.join("\n")
    );
}

/// Who answers `host` through `r`, polled until it is `want` (15 s).
fn expect(r: &Replica, host: &str, want: &str) {
    let mut last = String::new();
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        within(Duration::from_secs(15), host, || {
            last = answer(r.addr(), host);
            last == want
        })
    }));
    assert!(ok.is_ok(), "{host}: wanted {want}, still {last}");
}

/// The mock's `initial_sync_then_every_kind_changes_are_followed`, endpoint conditions and
/// class semantics, on the real server: every kind added, modified and deleted is followed.
#[test]
fn every_kind_classes_and_endpoint_conditions_follow_a_real_api_server() {
    let test = "every_kind_classes_and_endpoint_conditions_follow_a_real_api_server";
    let Some(kubeconfig) = real_kubeconfig(test) else {
        return;
    };
    let world = World::new(&kubeconfig, "kinds");
    let mut pods = Pods::new();
    let (a, b, c) = (
        pods.spawn("pod-a"),
        pods.spawn("pod-b"),
        pods.spawn("pod-c"),
    );
    let ready = |addr| (addr, true, true, false);
    let mut legacy = world.ingress("legacy", "legacy.test", "web");
    legacy["spec"]
        .as_object_mut()
        .unwrap()
        .remove("ingressClassName");
    legacy["metadata"]["annotations"] =
        serde_json::json!({"kubernetes.io/ingress.class": world.class});
    let mut classless = world.ingress("none", "none.test", "web");
    classless["spec"]
        .as_object_mut()
        .unwrap()
        .remove("ingressClassName");
    let mut theirs = world.ingress("theirs", "theirs.test", "web");
    theirs["spec"]["ingressClassName"] = serde_json::json!("nginx");
    world.create_all(&[
        service("web"),
        endpoints("web-1", "web", &[ready(a)]),
        world.ingress("web", "a.test", "web"),
        legacy,
        classless,
        theirs,
    ]);
    let r = Replica::start(
        settings(&kubeconfig, &world, "one"),
        Duration::from_secs(30),
    );
    assert_eq!(answer(r.addr(), "a.test"), "pod-a", "served from the list");
    assert_eq!(
        answer(r.addr(), "legacy.test"),
        "pod-a",
        "legacy annotation"
    );
    assert_eq!(answer(r.addr(), "theirs.test"), "404", "another class");
    assert_eq!(answer(r.addr(), "none.test"), "404", "class-less");

    // EndpointSlices: modified, a second one merged, one deleted.
    world.apply(endpoints("web-1", "web", &[ready(b)]));
    expect(&r, "a.test", "pod-b");
    world.apply(endpoints("web-2", "web", &[ready(c)]));
    within(Duration::from_secs(15), "both slices serve", || {
        let seen: std::collections::BTreeSet<String> =
            (0..8).map(|_| answer(r.addr(), "a.test")).collect();
        seen.contains("pod-b") && seen.contains("pod-c")
    });
    world.delete("EndpointSlice", "web-1");
    within(Duration::from_secs(15), "only pod-c", || {
        (0..6).all(|_| answer(r.addr(), "a.test") == "pod-c")
    });
    // Ingresses: added, host moved, deleted.
    world.apply(world.ingress("second", "b.test", "web"));
    expect(&r, "b.test", "pod-c");
    world.apply(world.ingress("second", "c.test", "web"));
    expect(&r, "c.test", "pod-c");
    expect(&r, "b.test", "404");
    world.delete("Ingress", "second");
    expect(&r, "c.test", "404");
    // Service: port renamed (the slice's port no longer matches) → 503; back; deleted → 503.
    let mut renamed = service("web");
    renamed["spec"]["ports"][0]["name"] = serde_json::json!("other");
    world.apply(renamed);
    expect(&r, "a.test", "503");
    world.apply(service("web"));
    expect(&r, "a.test", "pod-c");
    world.delete("Service", "web");
    expect(&r, "a.test", "503");
    world.apply(service("web"));
    expect(&r, "a.test", "pod-c");
    // Endpoint conditions: a ready one wins over a serving-but-terminating one; with nothing
    // ready the terminating ones serve; with nothing serving, 503.
    world.apply(endpoints(
        "web-2",
        "web",
        &[ready(a), (b, false, true, true)],
    ));
    within(Duration::from_secs(15), "only the ready pod-a", || {
        (0..6).all(|_| answer(r.addr(), "a.test") == "pod-a")
    });
    world.apply(endpoints(
        "web-2",
        "web",
        &[(a, false, true, true), (b, false, true, true)],
    ));
    within(Duration::from_secs(15), "both terminating serve", || {
        let seen: std::collections::BTreeSet<String> =
            (0..8).map(|_| answer(r.addr(), "a.test")).collect();
        seen.contains("pod-a") && seen.contains("pod-b")
    });
    world.apply(endpoints("web-2", "web", &[(a, false, false, true)]));
    expect(&r, "a.test", "503");
    world.apply(endpoints("web-2", "web", &[ready(b)]));
    expect(&r, "a.test", "pod-b");
    // IngressClass: ours becomes the cluster default (class-less Ingresses become ours), then
    // goes to another controller (ours by name no longer), then is deleted (ours by name).
    let class = |controller: &str, default: bool| {
        serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": world.class, "annotations":
                {"ingressclass.kubernetes.io/is-default-class": default.to_string()}},
            "spec": {"controller": controller}})
    };
    world.apply(class(&world.controller, true));
    expect(&r, "none.test", "pod-b");
    world.apply(class(&world.controller, false));
    expect(&r, "none.test", "404");
    world.delete("IngressClass", &world.class);
    world.apply(class("example.com/other", false));
    expect(&r, "a.test", "404");
    world.delete("IngressClass", &world.class);
    expect(&r, "a.test", "pod-b");
    r.stop();
}

/// The mock's published-Service status, TLS Secret caching and `sluice check`, on the real
/// server (which validates the Secrets' type and keys, and Service status subresources).
#[test]
fn published_service_status_tls_secrets_and_check_on_a_real_api_server() {
    let test = "published_service_status_tls_secrets_and_check_on_a_real_api_server";
    let Some(kubeconfig) = real_kubeconfig(test) else {
        return;
    };
    let world = World::new(&kubeconfig, "publish");
    let mut pods = Pods::new();
    let a = pods.spawn("pod-a");
    let secret = |name: &str, kind: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "type": kind, "data": {"tls.crt": "Y2VydA==", "tls.key": "a2V5"}})
    };
    let mut lb = service("lb");
    lb["spec"]["type"] = serde_json::json!("LoadBalancer");
    let mut tls = world.ingress("tls", "tls.test", "web");
    tls["spec"]["tls"] = serde_json::json!([{"hosts": ["tls.test"], "secretName": "used"}]);
    world.create_all(&[
        service("web"),
        endpoints("web-1", "web", &[(a, true, true, false)]),
        world.ingress("web", "a.test", "web"),
        lb,
    ]);
    let lb_status = |ip: &str| {
        let api: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::namespaced(world.client.clone(), &world.ns);
        let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}});
        world
            .rt
            .block_on(api.patch_status(
                "lb",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            ))
            .unwrap();
    };
    lb_status("198.51.100.1");

    // `sluice check` lists the cluster once and prints the routes.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["check", "--kubeconfig"])
        .arg(&kubeconfig)
        .args([
            "--watch-namespace",
            &world.ns,
            "--ingress-class",
            &world.class,
        ])
        .args(["--controller-class", &world.controller])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("a.test"), "{stdout}");
    // Not real certificates: Sluice reports them and serves the rest (cached all the same).
    world.create_all(&[
        secret("used", "kubernetes.io/tls"),
        secret("unused", "kubernetes.io/tls"),
        secret("opaque", "Opaque"),
        tls.clone(),
    ]);

    let mut s = settings(&kubeconfig, &world, "one");
    s.options.publish_status_address.clear();
    s.options.publish_service = Some((world.ns.clone(), "lb".into()));
    let r = Replica::start(s, Duration::from_secs(30));
    assert_eq!(answer(r.addr(), "a.test"), "pod-a");
    within(Duration::from_secs(15), "status from the Service", || {
        world.lb_ips("web") == ["198.51.100.1"]
    });
    lb_status("198.51.100.2");
    within(
        Duration::from_secs(15),
        "status follows the Service",
        || world.lb_ips("web") == ["198.51.100.2"] && world.lb_ips("tls") == ["198.51.100.2"],
    );

    let cached = || r.stats.cached_secrets.load(Ordering::Relaxed);
    within(Duration::from_secs(15), "one cached", || cached() == 1);
    tls["spec"]["tls"] = serde_json::json!([{"secretName": "used"}, {"secretName": "unused"}]);
    world.apply(tls.clone());
    within(Duration::from_secs(15), "two cached", || cached() == 2);
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(world.client.clone(), &world.ns);
    world
        .rt
        .block_on(api.delete("used", &Default::default()))
        .unwrap();
    within(Duration::from_secs(15), "deleted Secret dropped", || {
        cached() == 1
    });
    world.apply(secret("used", "kubernetes.io/tls"));
    within(Duration::from_secs(15), "re-created Secret cached", || {
        cached() == 2
    });
    tls["spec"]["tls"] = serde_json::json!([]);
    world.apply(tls);
    within(Duration::from_secs(15), "none cached", || cached() == 0);
    r.stop();
}

/// Another holder's Lease that is being renewed is respected (no leadership, no status
/// write); once it stops renewing, Sluice takes it over after the lease duration and writes.
#[test]
fn a_renewed_lease_is_respected_and_an_abandoned_one_taken_over() {
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    let test = "a_renewed_lease_is_respected_and_an_abandoned_one_taken_over";
    let Some(kubeconfig) = real_kubeconfig(test) else {
        return;
    };
    let world = World::new(&kubeconfig, "ghost");
    let mut pods = Pods::new();
    let a = pods.spawn("pod-a");
    world.create_all(&[
        service("web"),
        endpoints("web-1", "web", &[(a, true, true, false)]),
        world.ingress("web", "a.test", "web"),
    ]);
    let leases: kube::Api<Lease> = kube::Api::namespaced(world.client.clone(), &world.ns);
    let now = || serde_json::to_value(MicroTime(k8s_openapi::jiff::Timestamp::now())).unwrap();
    let ghost: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sluice-leader"},
        "spec": {"holderIdentity": "ghost", "leaseDurationSeconds": 2,
                 "acquireTime": now(), "renewTime": now(), "leaseTransitions": 0}}))
    .unwrap();
    world
        .rt
        .block_on(leases.create(&Default::default(), &ghost))
        .unwrap();
    let mut s = settings(&kubeconfig, &world, "one");
    s.lease = sluice::control::leader::LeaseSettings {
        duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry: Duration::from_millis(200),
    };
    let r = Replica::start(s, Duration::from_secs(30));
    // The ghost renews every 500 ms for 5 s: never ours.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let patch = serde_json::json!({"spec": {"renewTime": now()}});
        world
            .rt
            .block_on(leases.patch(
                "sluice-leader",
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            ))
            .unwrap();
        assert!(!r.stats.leader.load(Ordering::Relaxed), "took a live Lease");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(r.stats.status_updates.load(Ordering::Relaxed), 0);
    assert!(world.lb_ips("web").is_empty(), "a follower wrote status");
    // Abandoned: taken over after the lease duration, then status is written.
    let stopped = Instant::now();
    within(Duration::from_secs(10), "takes the abandoned Lease", || {
        r.stats.leader.load(Ordering::Relaxed)
    });
    let took = stopped.elapsed();
    let lease = world.rt.block_on(leases.get("sluice-leader")).unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("one"));
    assert_eq!(spec.lease_transitions, Some(1));
    assert!(
        took >= Duration::from_millis(1500),
        "taken before it expired: {took:?}"
    );
    within(Duration::from_secs(10), "status written", || {
        world.lb_ips("web") == ["192.0.2.10"]
    });
    r.stop();
}
