//! The layering rules of ARCHITECTURE.md, checked on the source text:
//! * `core` is sans-IO: it never imports the engines, the control plane, the admin server, an
//!   async runtime, a kernel interface, a socket, a file, a thread or a clock;
//! * `engine` never reaches up: a module under `src/engine` imports no top-level module other
//!   than `core` (which holds the published snapshot types) and `config`, and no crate that
//!   belongs to the control plane (tokio, kube).

use std::path::{Path, PathBuf};

/// What `src/core` must never mention, with the reason.
const CORE_FORBIDDEN: &[(&str, &str)] = &[
    ("crate::engine", "core must not depend on an engine"),
    ("crate::worker", "core must not depend on the worker"),
    (
        "crate::control",
        "core must not depend on the control plane",
    ),
    ("crate::admin", "core must not depend on the admin server"),
    ("tokio", "no async runtime in core"),
    ("io_uring", "no kernel interface in core"),
    ("libc", "no system calls in core"),
    ("smoltcp", "no network stack in core"),
    ("kube", "no Kubernetes client in core"),
    (
        "k8s_openapi",
        "core sees compiled snapshots, not Kubernetes objects",
    ),
    (
        "std::time::Instant",
        "time is passed in (core::time::Instant)",
    ),
    ("SystemTime", "time is passed in"),
    ("std::thread", "no threads in core"),
    ("std::fs", "no files in core"),
    ("std::process", "no processes in core"),
    ("TcpStream", "no sockets in core"),
    ("TcpListener", "no sockets in core"),
    ("UdpSocket", "no sockets in core"),
];

/// Top-level modules (and crates) `src/engine` may import: everything else is above it.
const ENGINE_ALLOWED: &[&str] = &["core", "config", "engine"];

/// What `src/engine` must never mention besides `crate::` paths outside [`ENGINE_ALLOWED`].
const ENGINE_FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "the control plane's runtime stays off the workers"),
    ("kube", "the engine sees snapshots, not the cluster"),
    (
        "k8s_openapi",
        "the engine sees snapshots, not Kubernetes objects",
    ),
];

/// The code part of each line (comments dropped), numbered from 1.
fn code_lines(source: &str) -> impl Iterator<Item = (usize, &str)> {
    source
        .lines()
        .enumerate()
        .map(|(n, line)| (n + 1, line.split("//").next().unwrap_or("")))
}

/// Returns `line: pattern (reason)` for every mention of a `forbidden` pattern in `source`.
fn violations(source: &str, forbidden: &[(&str, &str)]) -> Vec<String> {
    let mut found = Vec::new();
    for (n, code) in code_lines(source) {
        for (pattern, reason) in forbidden {
            if code.contains(pattern) {
                found.push(format!("{n}: {pattern} ({reason})"));
            }
        }
    }
    found
}

/// Returns `line: crate::name` for every `crate::name` path whose top-level module is not
/// allowed.
fn upward_imports(source: &str, allowed: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (n, code) in code_lines(source) {
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` lists are not used in this code base; flag them to be safe.
            if !allowed.contains(&name.as_str()) {
                found.push(format!("{n}: crate::{name}"));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every violation `check` finds in the sources under `src/<dir>` (at least `min` files).
fn check_tree(dir: &str, min: usize, check: impl Fn(&str) -> Vec<String>) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(
        files.len() >= min,
        "expected the {dir} sources, found {files:?}"
    );
    let mut all = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for v in check(&text) {
            all.push(format!("{}:{v}", file.display()));
        }
    }
    all
}

#[test]
fn core_is_sans_io() {
    let all = check_tree("core", 10, |text| violations(text, CORE_FORBIDDEN));
    assert!(all.is_empty(), "layering violations:\n{}", all.join("\n"));
}

#[test]
fn engine_imports_only_core_and_config() {
    let all = check_tree("engine", 10, |text| {
        let mut v = upward_imports(text, ENGINE_ALLOWED);
        v.extend(violations(text, ENGINE_FORBIDDEN));
        v
    });
    assert!(all.is_empty(), "layering violations:\n{}", all.join("\n"));
}

/// Inside `core`, dependencies point one way (`host` <- `route`, `tls` <- `snapshot` <-
/// `upstream`): each module, and what it must not import.
const CORE_ORDER: &[(&str, &[&str])] = &[
    (
        "host.rs",
        &[
            "core::route",
            "core::tls",
            "core::snapshot",
            "core::upstream",
        ],
    ),
    ("route", &["core::tls", "core::snapshot", "core::upstream"]),
    (
        "tls.rs",
        &["core::route", "core::snapshot", "core::upstream"],
    ),
    ("snapshot.rs", &["core::upstream"]),
];

#[test]
fn core_modules_depend_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut all = Vec::new();
    for (module, forbidden) in CORE_ORDER {
        let path = root.join(module);
        let mut files = Vec::new();
        if path.is_dir() {
            rust_files(&path, &mut files);
        } else {
            files.push(path);
        }
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read source");
            for (n, code) in code_lines(&text) {
                for pattern in *forbidden {
                    if code.contains(pattern) {
                        all.push(format!("{}:{n}: {pattern}", file.display()));
                    }
                }
            }
        }
    }
    assert!(all.is_empty(), "import circle in core:\n{}", all.join("\n"));
}

#[test]
fn the_checkers_catch_violations_and_ignore_comments() {
    let bad =
        "use std::sync::Arc;\nuse crate::engine::uring;\nlet t = std::time::Instant::now();\n";
    assert_eq!(violations(bad, CORE_FORBIDDEN).len(), 2);
    assert!(violations("// tokio is mentioned only in a comment\n", CORE_FORBIDDEN).is_empty());
    let engine = "use crate::core::conn::Conn;\nuse crate::admin::AdminHandle;\n\
                  use crate::engine::sys; // crate::control in a comment\n\
                  let m = crate::worker::WorkerMetrics::default();\n";
    assert_eq!(
        upward_imports(engine, ENGINE_ALLOWED),
        ["2: crate::admin", "4: crate::worker"]
    );
}
