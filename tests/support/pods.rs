//! In-process upstream pods for end-to-end tests: listeners on 127.0.0.1..=n that share one
//! port (distinct endpoint addresses behind one EndpointSlice port, as pods are), and the
//! Service `default/app` with the EndpointSlice that lists them. How each pod answers is the
//! test's own.

use std::net::TcpListener;

/// Listeners on 127.0.0.1..=n, all on one port that was free on every address.
pub fn bind(n: usize) -> (u16, Vec<TcpListener>) {
    for _ in 0..20 {
        let first = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        let mut listeners = vec![first];
        for i in 2..=n {
            match TcpListener::bind(format!("127.0.0.{i}:{port}")) {
                Ok(l) => listeners.push(l),
                Err(_) => break,
            }
        }
        if listeners.len() == n {
            return (port, listeners);
        }
    }
    panic!("no common free port on 127.0.0.1..={n}");
}

/// `ingresses`, then the Service `default/app` (port 80) and its EndpointSlice listing the
/// pods `pods` (1-based: 127.0.0.<i>) on `port`.
pub fn manifests(ingresses: &str, port: u16, pods: impl IntoIterator<Item = usize>) -> String {
    let addresses: Vec<String> = pods
        .into_iter()
        .map(|i| format!("\"127.0.0.{i}\""))
        .collect();
    format!(
        "{ingresses}\
         ---\napiVersion: v1\nkind: Service\nmetadata: {{name: app, namespace: default}}\nspec: {{ports: [{{port: 80}}]}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: app-1, namespace: default, labels: {{kubernetes.io/service-name: app}}}}\n\
         addressType: IPv4\nports: [{{port: {port}}}]\nendpoints: [{{addresses: [{}]}}]\n",
        addresses.join(", ")
    )
}
