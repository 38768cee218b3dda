//! Log events for what the control side rejects: one event per rejected object or field,
//! with the fields an operator filters on (`kind`, `namespace`, `name`, `field`, `reason`).

use super::compile::Diagnostic;

/// `Diagnostic::object` ("Ingress shop/web", "Secret default/tls", "IngressClass edge")
/// split into kind, namespace and name; parts it does not have are empty.
pub fn object_parts(object: &str) -> (&str, &str, &str) {
    let (kind, rest) = object.split_once(' ').unwrap_or((object, ""));
    match rest.split_once('/') {
        Some((namespace, name)) => (kind, namespace, name),
        None => (kind, "", rest),
    }
}

/// A newly rejected object or field (a warning: the rest is served without it).
pub fn rejected(d: &Diagnostic) {
    let (kind, namespace, name) = object_parts(&d.object);
    tracing::warn!(
        kind,
        namespace,
        name,
        field = %d.field,
        reason = %d.message,
        "rejected: {d}"
    );
}

/// A rejection that a later change cleared.
pub fn no_longer_rejected(d: &Diagnostic) {
    let (kind, namespace, name) = object_parts(&d.object);
    tracing::info!(
        kind,
        namespace,
        name,
        field = %d.field,
        "no longer rejected: {d}"
    );
}

#[cfg(test)]
mod tests {
    use super::object_parts;

    #[test]
    fn objects_split_into_kind_namespace_and_name() {
        assert_eq!(object_parts("Ingress shop/web"), ("Ingress", "shop", "web"));
        assert_eq!(
            object_parts("IngressClass edge"),
            ("IngressClass", "", "edge")
        );
        assert_eq!(object_parts("config"), ("config", "", ""));
    }
}
