//! A route's cookie affinity settings (`affinity: cookie`, `session-cookie-*`) as typed
//! values, and reading the endpoint id a request's cookie carries. Ids, cookies and
//! `Set-Cookie` live in `core::upstream::affinity`.

use std::sync::Arc;

/// `affinity-mode` (see `core::upstream::affinity` for how each reads a cookie).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// The cookie holds a session key placed by consistent hashing: sessions of an endpoint
    /// that leaves move, and added endpoints take a share of the existing sessions.
    #[default]
    Balanced,
    /// The cookie names the endpoint: sessions move only when their endpoint is gone.
    Persistent,
}

/// `session-cookie-samesite`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SameSite {
    None,
    Lax,
    Strict,
}

impl SameSite {
    pub fn parse(value: &str) -> Result<SameSite, String> {
        match value {
            "None" => Ok(SameSite::None),
            "Lax" => Ok(SameSite::Lax),
            "Strict" => Ok(SameSite::Strict),
            other => Err(format!("expected None, Lax or Strict, got {other:?}")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::None => "None",
            SameSite::Lax => "Lax",
            SameSite::Strict => "Strict",
        }
    }
}

/// A route's cookie affinity: typed values only (names and paths checked when read).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Affinity {
    pub mode: Mode,
    /// `session-cookie-name` (default `INGRESSCOOKIE`), a cookie-name token.
    pub name: Arc<str>,
    /// `session-cookie-path`; `None`: the matched rule's path.
    pub path: Option<Arc<str>>,
    pub domain: Option<Arc<str>>,
    /// `session-cookie-max-age`, seconds.
    pub max_age: Option<u64>,
    /// `session-cookie-expires`, seconds from now.
    pub expires: Option<u64>,
    pub samesite: Option<SameSite>,
    /// `session-cookie-secure` (HTTPS listeners always set `Secure`).
    pub secure: bool,
    /// `session-cookie-conditional-samesite-none`: leave `SameSite=None` out for clients
    /// known to mishandle it.
    pub conditional_samesite_none: bool,
    /// `session-cookie-change-on-failure`: after a retry, the cookie names the endpoint that
    /// answered (otherwise the client keeps its cookie).
    pub change_on_failure: bool,
}

impl Affinity {
    pub const DEFAULT_NAME: &'static str = "INGRESSCOOKIE";

    /// A cookie affinity with ingress-nginx's defaults.
    pub fn new() -> Affinity {
        Affinity {
            mode: Mode::Balanced,
            name: Arc::from(Affinity::DEFAULT_NAME),
            path: None,
            domain: None,
            max_age: None,
            expires: None,
            samesite: None,
            secure: false,
            conditional_samesite_none: false,
            change_on_failure: false,
        }
    }

    /// The endpoint id the request's `Cookie` field names for this affinity, if any.
    pub fn requested(&self, cookie_field: Option<&[u8]>) -> Option<u64> {
        let value = cookie_value(cookie_field?, self.name.as_bytes())?;
        parse_id(value)
    }
}

impl Default for Affinity {
    fn default() -> Self {
        Affinity::new()
    }
}

impl std::fmt::Display for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.mode {
            Mode::Balanced => "balanced",
            Mode::Persistent => "persistent",
        };
        write!(f, "cookie({},{mode})", self.name)
    }
}

fn parse_id(value: &[u8]) -> Option<u64> {
    if value.len() != 16 {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    u64::from_str_radix(text, 16).ok()
}

/// The value of cookie `name` in a `Cookie` field.
fn cookie_value<'a>(field: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    field.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        (pair[..eq].trim_ascii() == name).then(|| pair[eq + 1..].trim_ascii())
    })
}

/// A cookie name: an HTTP token.
pub fn parse_name(value: &str) -> Result<Arc<str>, String> {
    let ok = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(Arc::from(value))
    } else {
        Err(format!(
            "{value:?} is not a cookie name (letters, digits, -_.!#$%&'*+^`|~)"
        ))
    }
}

/// A cookie `Path` or `Domain` value: visible ASCII without `;` or `,`.
pub fn parse_attribute(value: &str) -> Result<Arc<str>, String> {
    let ok = !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b';');
    if ok {
        Ok(Arc::from(value))
    } else {
        Err(format!(
            "{value:?} is not a cookie attribute value (visible ASCII, no ';')"
        ))
    }
}
