//! The layering rule of ARCHITECTURE.md: `core` is sans-IO. It never imports the engines,
//! the worker, the control plane, an async runtime, a kernel interface or a clock.

use std::path::Path;

/// What `src/core` must never mention, with the reason.
const FORBIDDEN: &[(&str, &str)] = &[
    ("crate::engine", "core must not depend on an engine"),
    ("crate::worker", "core must not depend on the worker"),
    (
        "crate::control",
        "core must not depend on the control plane",
    ),
    ("crate::admin", "core must not depend on the admin server"),
    ("tokio", "no async runtime in core"),
    ("io_uring", "no kernel interface in core"),
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
    ("TcpStream", "no sockets in core"),
    ("TcpListener", "no sockets in core"),
    ("UdpSocket", "no sockets in core"),
];

/// Returns `line: pattern (reason)` for every violation in `source`, ignoring comments.
fn violations(source: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (n, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for (pattern, reason) in FORBIDDEN {
            if code.contains(pattern) {
                found.push(format!("{}: {pattern} ({reason})", n + 1));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src/core") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn core_is_sans_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(
        files.len() >= 10,
        "expected the core sources, found {files:?}"
    );
    let mut all = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("read source");
        for v in violations(&text) {
            all.push(format!("{}:{v}", file.display()));
        }
    }
    assert!(all.is_empty(), "layering violations:\n{}", all.join("\n"));
}

#[test]
fn the_checker_catches_violations_and_ignores_comments() {
    let bad =
        "use std::sync::Arc;\nuse crate::engine::uring;\nlet t = std::time::Instant::now();\n";
    assert_eq!(violations(bad).len(), 2);
    assert!(violations("// tokio is mentioned only in a comment\n").is_empty());
}
