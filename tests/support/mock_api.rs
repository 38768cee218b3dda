//! A mock Kubernetes API server, kept for the faults a real API server cannot be made to
//! produce on demand: malformed objects, watch streams cut half-way or at a chosen event,
//! reconnects held, history compacted at an exact point, slow list pages, an API server that
//! drops every connection for a chosen while. Everything a real server can show is tested
//! against one (`tests/k8s_real.rs`, `../shared/k8s/`), which is the reference: this mock is
//! more permissive (it accepts loopback endpoint addresses and objects the real validation
//! refuses), so a behaviour seen only here proves nothing about a cluster.
//!
//! Plain HTTP/1.1 on 127.0.0.1:0, speaking the real
//! list and watch protocol (JSON lists with `metadata.resourceVersion`; chunked watch streams of
//! ADDED/MODIFIED/DELETED/BOOKMARK/ERROR events; 410 Gone for a resourceVersion older than the
//! compaction point, as an ERROR event or as the HTTP status). Writes (POST/PUT/PATCH/DELETE)
//! change its objects like a real API server (with resourceVersion conflicts) and are recorded
//! so tests can assert on them. Tests drive it: apply/delete objects, cut watch streams, hold
//! reconnects, compact history, slow down lists.
#![allow(dead_code, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A resource collection: API prefix, plural, kind, whether namespaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Res {
    pub prefix: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

pub const INGRESSES: Res = Res {
    prefix: "/apis/networking.k8s.io/v1",
    plural: "ingresses",
    kind: "Ingress",
    namespaced: true,
};
pub const CLASSES: Res = Res {
    prefix: "/apis/networking.k8s.io/v1",
    plural: "ingressclasses",
    kind: "IngressClass",
    namespaced: false,
};
pub const SERVICES: Res = Res {
    prefix: "/api/v1",
    plural: "services",
    kind: "Service",
    namespaced: true,
};
pub const SLICES: Res = Res {
    prefix: "/apis/discovery.k8s.io/v1",
    plural: "endpointslices",
    kind: "EndpointSlice",
    namespaced: true,
};
pub const SECRETS: Res = Res {
    prefix: "/api/v1",
    plural: "secrets",
    kind: "Secret",
    namespaced: true,
};
pub const LEASES: Res = Res {
    prefix: "/apis/coordination.k8s.io/v1",
    plural: "leases",
    kind: "Lease",
    namespaced: true,
};
pub const EVENTS: Res = Res {
    prefix: "/apis/events.k8s.io/v1",
    plural: "events",
    kind: "Event",
    namespaced: true,
};
pub const NAMESPACES: Res = Res {
    prefix: "/api/v1",
    plural: "namespaces",
    kind: "Namespace",
    namespaced: false,
};
const ALL: [Res; 8] = [
    INGRESSES, CLASSES, SERVICES, SLICES, SECRETS, LEASES, EVENTS, NAMESPACES,
];

impl Res {
    fn api_version(&self) -> &'static str {
        self.prefix
            .trim_start_matches("/apis/")
            .trim_start_matches("/api/")
    }
}

/// One request that changed something (or tried to).
#[derive(Clone, Debug)]
pub struct Write_ {
    pub method: String,
    pub path: String,
    pub body: Value,
    pub status: u16,
}

#[derive(Clone)]
struct Change {
    rv: u64,
    res: &'static str,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    /// (plural, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    log: Vec<Change>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    /// Bumped to end every open watch stream abruptly.
    cut: u64,
    /// While true, new watch requests wait.
    hold: bool,
    /// Answer the next N watch requests with HTTP 410 instead of a stream.
    gone_http: usize,
    /// Sleep this long before answering a list.
    list_delay: Duration,
    lists: BTreeMap<String, usize>,
    watches: BTreeMap<String, usize>,
    writes: Vec<Write_>,
    /// Bumped to make every open watch send a BOOKMARK.
    bookmark: u64,
    uid: u64,
    /// Every GET: path and decoded query.
    reads: Vec<(String, BTreeMap<String, String>)>,
    /// Close every connection without an answer (the API server is "down").
    down: bool,
    /// Requests answered with 503 while down.
    refused: usize,
}

pub struct MockApi {
    pub addr: SocketAddr,
    shared: Arc<(Mutex<State>, Condvar)>,
}

fn find_res(prefix: &str, plural: &str) -> Option<Res> {
    ALL.iter()
        .copied()
        .find(|r| r.prefix == prefix && r.plural == plural)
}

fn meta_str(o: &Value, field: &str) -> String {
    o.pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

impl MockApi {
    pub fn start() -> MockApi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind mock API server");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new((
            Mutex::new(State {
                rv: 100,
                ..State::default()
            }),
            Condvar::new(),
        ));
        let s = shared.clone();
        std::thread::Builder::new()
            .name("mock-api".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let s = s.clone();
                    let _ = std::thread::Builder::new()
                        .name("mock-api-conn".into())
                        .spawn(move || {
                            let _ = serve(stream, &s);
                        });
                }
            })
            .unwrap();
        MockApi { addr, shared }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.0.lock().unwrap()
    }

    /// A kubeconfig file pointing at this server (plain HTTP, no credentials).
    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: mock\n  cluster:\n    server: http://{}\ncontexts:\n- name: mock\n  context:\n    cluster: mock\n    user: mock\ncurrent-context: mock\nusers:\n- name: mock\n  user: {{}}\n",
                self.addr
            ),
        )
        .unwrap();
        path
    }

    /// Creates or replaces an object (ADDED or MODIFIED), as `kubectl apply` would.
    pub fn apply(&self, res: Res, mut object: Value) {
        let mut st = self.state();
        let ns = if res.namespaced {
            let ns = meta_str(&object, "namespace");
            if ns.is_empty() {
                "default".to_string()
            } else {
                ns
            }
        } else {
            String::new()
        };
        if res.namespaced {
            object["metadata"]["namespace"] = json!(ns);
        }
        let name = meta_str(&object, "name");
        let key = (res.plural.to_string(), ns, name);
        let exists = st.objects.get(&key).cloned();
        object["apiVersion"] = json!(res.api_version());
        object["kind"] = json!(res.kind);
        if let Some(old) = &exists {
            for f in ["uid", "creationTimestamp"] {
                object["metadata"][f] = old["metadata"][f].clone();
            }
        }
        commit(&mut st, res, key, object, exists.is_none());
        self.shared.1.notify_all();
    }

    pub fn delete(&self, res: Res, ns: &str, name: &str) {
        let mut st = self.state();
        let ns = if res.namespaced { ns } else { "" };
        let key = (res.plural.to_string(), ns.to_string(), name.to_string());
        if let Some(mut object) = st.objects.remove(&key) {
            st.rv += 1;
            let rv = st.rv;
            object["metadata"]["resourceVersion"] = json!(rv.to_string());
            st.log.push(Change {
                rv,
                res: res.plural,
                kind: "DELETED",
                object,
            });
        }
        self.shared.1.notify_all();
    }

    pub fn get(&self, res: Res, ns: &str, name: &str) -> Option<Value> {
        let ns = if res.namespaced { ns } else { "" };
        self.state()
            .objects
            .get(&(res.plural.to_string(), ns.to_string(), name.to_string()))
            .cloned()
    }

    pub fn list(&self, res: Res) -> Vec<Value> {
        self.state()
            .objects
            .iter()
            .filter(|((p, _, _), _)| p == res.plural)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Ends every open watch stream abruptly (no terminating chunk), as a dropped connection.
    pub fn cut_watches(&self) {
        self.state().cut += 1;
        self.shared.1.notify_all();
    }

    /// While held, new watch requests wait (the client is "disconnected").
    pub fn hold_watches(&self, hold: bool) {
        self.state().hold = hold;
        self.shared.1.notify_all();
    }

    /// Forgets history: watches from any resourceVersion up to now get 410 Gone.
    pub fn compact(&self) {
        let mut st = self.state();
        st.compacted = st.rv + 1;
        self.shared.1.notify_all();
    }

    /// The next `n` watch requests get HTTP 410 (instead of a stream with an ERROR event).
    pub fn gone_http(&self, n: usize) {
        self.state().gone_http = n;
    }

    pub fn set_list_delay(&self, d: Duration) {
        self.state().list_delay = d;
    }

    /// Every open watch sends a BOOKMARK with the current resourceVersion.
    pub fn bookmark(&self) {
        self.state().bookmark += 1;
        self.shared.1.notify_all();
    }

    pub fn lists(&self, res: Res) -> usize {
        self.state().lists.get(res.plural).copied().unwrap_or(0)
    }

    pub fn watches(&self, res: Res) -> usize {
        self.state().watches.get(res.plural).copied().unwrap_or(0)
    }

    /// Down: every connection closes without an answer and open watches end. Up again:
    /// normal service.
    pub fn set_down(&self, down: bool) {
        let mut st = self.state();
        st.down = down;
        if down {
            st.cut += 1;
        }
        self.shared.1.notify_all();
    }

    /// Requests dropped while down.
    pub fn refused(&self) -> usize {
        self.state().refused
    }

    /// Every GET so far: path and decoded query parameters.
    pub fn reads(&self) -> Vec<(String, BTreeMap<String, String>)> {
        self.state().reads.clone()
    }

    pub fn writes(&self) -> Vec<Write_> {
        self.state().writes.clone()
    }

    pub fn resource_version(&self) -> u64 {
        self.state().rv
    }
}

fn commit(st: &mut State, res: Res, key: (String, String, String), mut object: Value, added: bool) {
    st.rv += 1;
    let rv = st.rv;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    if object.pointer("/metadata/uid").is_none_or(Value::is_null) {
        st.uid += 1;
        object["metadata"]["uid"] = json!(format!("uid-{}", st.uid));
    }
    if object
        .pointer("/metadata/creationTimestamp")
        .is_none_or(Value::is_null)
    {
        object["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    }
    st.objects.insert(key, object.clone());
    st.log.push(Change {
        rv,
        res: res.plural,
        kind: if added { "ADDED" } else { "MODIFIED" },
        object,
    });
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Value,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        head.push(line);
    }
    let first = head.first()?.clone();
    let mut parts = first.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let mut length = 0usize;
    for h in &head[1..] {
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).ok()?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    })
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(out: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        _ => "Error",
    };
    write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
        text.len()
    )
}

/// Route: (resource, namespace or "", name or "", subresource or "").
fn route(path: &str) -> Option<(Res, String, String, String)> {
    let (prefix, rest) = if let Some(r) = path.strip_prefix("/api/v1/") {
        ("/api/v1", r)
    } else {
        let r = path.strip_prefix("/apis/")?;
        let mut it = r.splitn(3, '/');
        let group = it.next()?;
        let version = it.next()?;
        let rest = it.next()?;
        let prefix = ALL
            .iter()
            .find(|x| x.prefix == format!("/apis/{group}/{version}"))?
            .prefix;
        (prefix, rest)
    };
    let seg: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (ns, seg) = if seg.first() == Some(&"namespaces") && seg.len() >= 3 {
        (seg[1].to_string(), &seg[2..])
    } else {
        (String::new(), &seg[..])
    };
    let res = find_res(prefix, seg.first()?)?;
    let name = seg.get(1).map(|s| s.to_string()).unwrap_or_default();
    let sub = seg.get(2).map(|s| s.to_string()).unwrap_or_default();
    Some((res, ns, name, sub))
}

fn matches(object: &Value, ns: &str, query: &BTreeMap<String, String>) -> bool {
    if !ns.is_empty() && meta_str(object, "namespace") != ns {
        return false;
    }
    if let Some(sel) = query.get("fieldSelector") {
        for term in sel.split(',').filter(|t| !t.is_empty()) {
            let Some((field, want)) = term.split_once('=') else {
                continue;
            };
            let got = match field {
                "type" => object.get("type").and_then(Value::as_str).unwrap_or(""),
                "metadata.name" => object
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                "metadata.namespace" => object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
                _ => continue,
            };
            if got != want {
                return false;
            }
        }
    }
    true
}

fn serve(stream: TcpStream, shared: &Arc<(Mutex<State>, Condvar)>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    while let Some(req) = read_request(&mut reader) {
        {
            let mut st = shared.0.lock().unwrap();
            if st.down {
                // Unreachable: the connection closes without an answer.
                st.refused += 1;
                return Ok(());
            }
            if req.method == "GET" {
                st.reads.push((req.path.clone(), req.query.clone()));
            }
        }
        if req.path == "/readyz" {
            respond(&mut out, 200, &json!("ok"))?;
            continue;
        }
        let Some((res, ns, name, sub)) = route(&req.path) else {
            respond(&mut out, 404, &status_body(404, "NotFound", "no such path"))?;
            continue;
        };
        let watching = req
            .query
            .get("watch")
            .is_some_and(|w| w == "true" || w == "1");
        if req.method == "GET" && name.is_empty() && watching {
            watch(out, shared, res, &ns, &req)?;
            return Ok(());
        }
        let (code, body) = handle(shared, res, &ns, &name, &sub, &req);
        respond(&mut out, code, &body)?;
    }
    Ok(())
}

fn handle(
    shared: &Arc<(Mutex<State>, Condvar)>,
    res: Res,
    ns: &str,
    name: &str,
    sub: &str,
    req: &Request,
) -> (u16, Value) {
    let (lock, cv) = &**shared;
    if req.method == "GET" && name.is_empty() {
        let delay = lock.lock().unwrap().list_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        let mut st = lock.lock().unwrap();
        *st.lists.entry(res.plural.to_string()).or_default() += 1;
        // Pages as the API server cuts them: `limit` items, then a `continue` token (here
        // simply the offset of the next item).
        let offset: usize = req
            .query
            .get("continue")
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let limit: usize = req
            .query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let matching = st
            .objects
            .iter()
            .filter(|((p, _, _), o)| p == res.plural && matches(o, ns, &req.query));
        let items: Vec<Value> = matching
            .clone()
            .skip(offset)
            .take(limit)
            .map(|(_, o)| o.clone())
            .collect();
        let more = matching.count() > offset.saturating_add(items.len());
        let mut metadata = json!({"resourceVersion": st.rv.to_string()});
        if more {
            metadata["continue"] = json!((offset + items.len()).to_string());
        }
        return (
            200,
            json!({"apiVersion": res.api_version(), "kind": format!("{}List", res.kind),
                   "metadata": metadata, "items": items}),
        );
    }
    let key = (res.plural.to_string(), ns.to_string(), name.to_string());
    let mut st = lock.lock().unwrap();
    if req.method == "GET" {
        return match st.objects.get(&key) {
            Some(o) => (200, o.clone()),
            None => (404, status_body(404, "NotFound", "not found")),
        };
    }
    let (code, body) = match req.method.as_str() {
        "POST" => {
            let mut object = req.body.clone();
            let name = meta_str(&object, "name");
            let key = (res.plural.to_string(), ns.to_string(), name);
            if st.objects.contains_key(&key) {
                (409, status_body(409, "AlreadyExists", "already exists"))
            } else {
                if res.namespaced {
                    object["metadata"]["namespace"] = json!(ns);
                }
                object["apiVersion"] = json!(res.api_version());
                object["kind"] = json!(res.kind);
                commit(&mut st, res, key.clone(), object, true);
                (201, st.objects[&key].clone())
            }
        }
        "PUT" | "PATCH" => match st.objects.get(&key).cloned() {
            None => (404, status_body(404, "NotFound", "not found")),
            Some(old) => {
                let mut object = old.clone();
                let conflict = req.method == "PUT"
                    && req
                        .body
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .is_some_and(|rv| rv != meta_str(&old, "resourceVersion"));
                if conflict {
                    (
                        409,
                        status_body(409, "Conflict", "the object has been modified"),
                    )
                } else {
                    match (req.method.as_str(), sub) {
                        ("PUT", "status") => object["status"] = req.body["status"].clone(),
                        ("PUT", _) => {
                            object = req.body.clone();
                            object["status"] = old["status"].clone();
                        }
                        ("PATCH", "status") => {
                            merge(&mut object["status"], &req.body["status"]);
                        }
                        _ => {
                            let mut patch = req.body.clone();
                            if let Some(m) = patch.as_object_mut() {
                                m.remove("status");
                            }
                            merge(&mut object, &patch);
                        }
                    }
                    if object.get("status").is_some_and(Value::is_null) {
                        object.as_object_mut().map(|m| m.remove("status"));
                    }
                    for f in ["uid", "creationTimestamp", "namespace", "name"] {
                        object["metadata"][f] = old["metadata"][f].clone();
                    }
                    object["apiVersion"] = json!(res.api_version());
                    object["kind"] = json!(res.kind);
                    commit(&mut st, res, key.clone(), object, false);
                    (200, st.objects[&key].clone())
                }
            }
        },
        "DELETE" => match st.objects.remove(&key) {
            Some(o) => {
                st.rv += 1;
                let rv = st.rv;
                st.log.push(Change {
                    rv,
                    res: res.plural,
                    kind: "DELETED",
                    object: o.clone(),
                });
                (200, o)
            }
            None => (404, status_body(404, "NotFound", "not found")),
        },
        _ => (405, status_body(405, "MethodNotAllowed", "no")),
    };
    st.writes.push(Write_ {
        method: req.method.clone(),
        path: req.path.clone(),
        body: req.body.clone(),
        status: code,
    });
    cv.notify_all();
    (code, body)
}

fn chunk(out: &mut TcpStream, event: &Value) -> std::io::Result<()> {
    let mut text = event.to_string();
    text.push('\n');
    write!(out, "{:x}\r\n{text}\r\n", text.len())?;
    out.flush()
}

fn watch(
    mut out: TcpStream,
    shared: &Arc<(Mutex<State>, Condvar)>,
    res: Res,
    ns: &str,
    req: &Request,
) -> std::io::Result<()> {
    let (lock, cv) = &**shared;
    let mut st = lock.lock().unwrap();
    *st.watches.entry(res.plural.to_string()).or_default() += 1;
    while st.hold {
        st = cv.wait(st).unwrap();
    }
    let from: u64 = req
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(st.rv);
    if st.gone_http > 0 {
        st.gone_http -= 1;
        drop(st);
        return respond(
            &mut out,
            410,
            &status_body(410, "Expired", "too old resource version"),
        );
    }
    let timeout = req
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .unwrap_or(290u64);
    let until = Instant::now() + Duration::from_secs(timeout);
    write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )?;
    out.flush()?;
    if from < st.compacted {
        let gone = json!({"type": "ERROR", "object": status_body(410, "Expired",
            &format!("too old resource version: {from} ({})", st.compacted))});
        drop(st);
        chunk(&mut out, &gone)?;
        return out.write_all(b"0\r\n\r\n");
    }
    let cut = st.cut;
    let mut bookmark = st.bookmark;
    let mut sent = from;
    loop {
        let start = st.log.partition_point(|c| c.rv <= sent);
        let pending: Vec<Change> = st.log[start..]
            .iter()
            .filter(|c| c.rv > sent && c.res == res.plural && matches(&c.object, ns, &req.query))
            .cloned()
            .collect();
        let newest = st.rv;
        let want_bookmark = st.bookmark != bookmark;
        bookmark = st.bookmark;
        if st.cut != cut {
            // An abrupt end: no terminating chunk, the connection just closes.
            return Ok(());
        }
        drop(st);
        for c in &pending {
            chunk(&mut out, &json!({"type": c.kind, "object": c.object}))?;
        }
        sent = sent.max(newest);
        if want_bookmark {
            chunk(
                &mut out,
                &json!({"type": "BOOKMARK", "object": {"apiVersion": res.api_version(), "kind": res.kind,
                        "metadata": {"resourceVersion": newest.to_string()}}}),
            )?;
        }
        st = lock.lock().unwrap();
        if Instant::now() >= until {
            drop(st);
            return out.write_all(b"0\r\n\r\n");
        }
        if st.rv == newest && st.cut == cut && st.bookmark == bookmark {
            st = cv.wait_timeout(st, Duration::from_millis(200)).unwrap().0;
        }
    }
}
