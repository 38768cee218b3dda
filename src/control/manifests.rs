//! Kubernetes YAML on disk → typed objects. The same objects the cluster watch delivers
//! (Ingress, IngressClass, Service, EndpointSlice, Secret), exactly as kubectl would apply
//! them: multi-document files and `kind: List` are accepted. A document that fails is reported
//! with file, line and reason; the others still load.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde_yaml::Value;

/// One object Sluice reads. Shared (`Arc`): sources keep the objects they parsed and hand
/// them to every compile without copying them.
#[derive(Clone, Debug)]
pub enum Object {
    Ingress(Arc<Ingress>),
    IngressClass(Arc<IngressClass>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    Secret(Arc<Secret>),
}

/// A document that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestError {
    pub file: String,
    /// 1-based line in the file.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

impl std::error::Error for ManifestError {}

/// Splits `text` into YAML documents, with the 1-based line each starts on.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (n, line) in text.lines().enumerate() {
        let marker = line.starts_with("---")
            && line[3..]
                .chars()
                .next()
                .is_none_or(|c| c == ' ' || c == '\t');
        if marker || line == "..." {
            docs.push((start, std::mem::take(&mut current)));
            start = n + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs
}

/// Parses every document of one file.
pub fn parse_documents(text: &str, file: &str) -> (Vec<Object>, Vec<ManifestError>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (start, doc) in documents(text) {
        let error = |line: usize, message: String| ManifestError {
            file: file.to_string(),
            line,
            message,
        };
        // The kind, from a top-level `kind:` line when there is one (one parse instead of
        // two for the common case); otherwise from a generic parse.
        let kind = match top_level_kind(&doc) {
            Some(kind) if kind != "List" => kind.to_string(),
            _ => {
                let value: Value = match serde_yaml::from_str(&doc) {
                    Ok(v) => v,
                    Err(e) => {
                        let line = start + e.location().map_or(0, |l| l.line().saturating_sub(1));
                        errors.push(error(line, e.to_string()));
                        continue;
                    }
                };
                if value.is_null() {
                    continue; // empty document (comments only)
                }
                let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
                if kind == "List" {
                    let items = value.get("items").and_then(Value::as_sequence);
                    for (i, item) in items.into_iter().flatten().enumerate() {
                        match object_from_value(item.clone()) {
                            Ok(Some(o)) => objects.push(o),
                            Ok(None) => {}
                            Err(e) => errors.push(error(start, format!("items[{i}]: {e}"))),
                        }
                    }
                    continue;
                }
                kind.to_string()
            }
        };
        let kind = kind.as_str();
        // Typed parse from the text (not the Value) so errors carry a line.
        match object_from_str(kind, &doc) {
            Ok(Some(o)) => objects.push(o),
            Ok(None) => {}
            Err(e) => {
                let line = start + e.location().map_or(0, |l| l.line().saturating_sub(1));
                errors.push(error(line, format!("{kind}: {e}")));
            }
        }
    }
    (objects, errors)
}

/// The value of an unindented `kind:` line, if the document has exactly one.
fn top_level_kind(doc: &str) -> Option<&str> {
    let mut kinds = doc.lines().filter_map(|l| l.strip_prefix("kind:"));
    let kind = kinds.next()?;
    if kinds.next().is_some() {
        return None;
    }
    let kind = kind
        .split('#')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches(|c| c == '"' || c == '\'');
    (!kind.is_empty()).then_some(kind)
}

fn object_from_str(kind: &str, doc: &str) -> Result<Option<Object>, serde_yaml::Error> {
    Ok(Some(match kind {
        "Ingress" => Object::Ingress(Arc::new(serde_yaml::from_str(doc)?)),
        "IngressClass" => Object::IngressClass(Arc::new(serde_yaml::from_str(doc)?)),
        "Service" => Object::Service(Arc::new(serde_yaml::from_str(doc)?)),
        "EndpointSlice" => Object::EndpointSlice(Arc::new(serde_yaml::from_str(doc)?)),
        "Secret" => secret(serde_yaml::from_str(doc)?),
        // Other kinds (Deployments, ConfigMaps, …) are not ours to read.
        _ => return Ok(None),
    }))
}

fn object_from_value(value: Value) -> Result<Option<Object>, serde_yaml::Error> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Ok(Some(match kind.as_str() {
        "Ingress" => Object::Ingress(Arc::new(serde_yaml::from_value(value)?)),
        "IngressClass" => Object::IngressClass(Arc::new(serde_yaml::from_value(value)?)),
        "Service" => Object::Service(Arc::new(serde_yaml::from_value(value)?)),
        "EndpointSlice" => Object::EndpointSlice(Arc::new(serde_yaml::from_value(value)?)),
        "Secret" => secret(serde_yaml::from_value(value)?),
        _ => return Ok(None),
    }))
}

/// A Secret as the API server would store it: `stringData` (a write-only convenience) merged
/// into `data`, winning over a key of the same name.
fn secret(mut s: Secret) -> Object {
    if let Some(strings) = s.string_data.take() {
        let data = s.data.get_or_insert_with(Default::default);
        for (k, v) in strings {
            data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
        }
    }
    Object::Secret(Arc::new(s))
}

/// Reads every `*.yaml` / `*.yml` file of `dir` (not recursive), in name order.
pub fn load_dir(dir: &Path) -> (Vec<Object>, Vec<ManifestError>) {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            errors.push(ManifestError {
                file: dir.display().to_string(),
                line: 0,
                message: format!("cannot read directory: {e}"),
            });
            return (objects, errors);
        }
    };
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    for path in paths {
        let name = path.display().to_string();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let (o, e) = parse_documents(&text, &name);
                objects.extend(o);
                errors.extend(e);
            }
            Err(e) => errors.push(ManifestError {
                file: name,
                line: 0,
                message: format!("cannot read file: {e}"),
            }),
        }
    }
    (objects, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_data_is_merged_into_data_as_the_api_server_does() {
        let doc = "apiVersion: v1\nkind: Secret\nmetadata: {name: auth, namespace: shop}\n\
                   data: {auth: b2xk, keep: a2VlcA==}\nstringData: {auth: \"foo:{PLAIN}bar\"}\n";
        let (objects, errors) = parse_documents(doc, "s.yaml");
        assert!(errors.is_empty(), "{errors:?}");
        let [Object::Secret(s)] = objects.as_slice() else {
            panic!("one Secret expected")
        };
        assert!(s.string_data.is_none());
        let data = s.data.as_ref().unwrap();
        assert_eq!(data["auth"].0, b"foo:{PLAIN}bar", "stringData wins");
        assert_eq!(data["keep"].0, b"keep");
    }
}
