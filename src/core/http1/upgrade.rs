//! Which protocol upgrades (RFC 9110 §7.8) may be relayed through Sluice.
//!
//! An upgrade turns the connection into a tunnel that no routing rule or per-path policy sees
//! again, so only protocols on an explicit list are relayed (WebSocket by default). Cleartext
//! HTTP/2 (`h2c`, and `HTTP/2.0` as an Upgrade token) is never relayed, whatever the list
//! says: tunnelled past the proxy it is "h2c smuggling". A request asking for anything else is
//! forwarded as plain HTTP/1.1 without its `Upgrade` field.

use super::request::is_tchar;

/// Upgrade protocols that are never relayed: HTTP/2 over cleartext.
const NEVER: [&str; 3] = ["h2c", "h2", "http"];

/// The protocols that may be relayed, compared by name, case-insensitively.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrades {
    names: Vec<Box<str>>,
}

impl Default for Upgrades {
    /// WebSocket only.
    fn default() -> Self {
        Upgrades {
            names: vec!["websocket".into()],
        }
    }
}

impl Upgrades {
    /// The allowed protocol names (`websocket`, …; without a version). Refuses names that are
    /// not tokens and the HTTP/2 ones, saying why.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Result<Upgrades, String> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let name = name.as_ref();
            if name.is_empty() || !name.bytes().all(is_tchar) {
                return Err(format!("{name:?} is not a protocol name (a token)"));
            }
            if NEVER.iter().any(|n| name.eq_ignore_ascii_case(n)) {
                return Err(format!(
                    "{name:?}: HTTP/2 upgrades are never relayed (h2c smuggling)"
                ));
            }
            out.push(name.into());
        }
        Ok(Upgrades { names: out })
    }

    /// Nothing may be relayed.
    pub fn none() -> Upgrades {
        Upgrades { names: Vec::new() }
    }

    /// True when the `Upgrade` field `value` may be relayed: a well-formed, non-empty list of
    /// `protocol-name [ "/" protocol-version ]` in which every protocol is allowed. A list
    /// that also offers anything else (`h2c, websocket`) is not relayed at all: the upstream
    /// would be free to pick the other one.
    pub fn allows(&self, value: &str) -> bool {
        let mut any = false;
        for element in value.split(',') {
            let element = element.trim_matches([' ', '\t']);
            if element.is_empty() {
                continue;
            }
            let (name, version) = match element.split_once('/') {
                Some((name, version)) => (name, Some(version)),
                None => (element, None),
            };
            let token = |s: &str| !s.is_empty() && s.bytes().all(is_tchar);
            if !token(name)
                || !version.is_none_or(token)
                || NEVER.iter().any(|n| name.eq_ignore_ascii_case(n))
                || !self.names.iter().any(|n| name.eq_ignore_ascii_case(n))
            {
                return false;
            }
            any = true;
        }
        any
    }
}

/// The names, comma-separated (`-` when none).
impl std::fmt::Display for Upgrades {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.names.is_empty() {
            return f.write_str("-");
        }
        for (i, name) in self.names.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_by_default_and_never_h2c() {
        let d = Upgrades::default();
        for ok in [
            "websocket",
            "WebSocket",
            " websocket ",
            "websocket/13",
            "websocket, WEBSOCKET",
        ] {
            assert!(d.allows(ok), "{ok}");
        }
        for no in [
            "h2c",
            "H2C",
            "h2c, websocket",
            "websocket, h2c",
            "HTTP/2.0",
            "foo",
            "",
            ",",
            "websocket/",
            "websocket;x",
            "web socket",
            "websocket/1 3",
        ] {
            assert!(!d.allows(no), "{no:?}");
        }
        let custom = Upgrades::new(&["foo", "websocket"]).unwrap();
        assert!(custom.allows("foo/2, websocket"));
        assert!(!custom.allows("foo, h2c"));
        assert!(!Upgrades::none().allows("websocket"));
        for refused in ["h2c", "H2", "HTTP", "", "a b"] {
            assert!(Upgrades::new(&[refused]).is_err(), "{refused:?}");
        }
    }
}
