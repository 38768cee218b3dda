//! The `upstream-hash-by` key of a route: a template in ingress-nginx's variable syntax,
//! compiled once into typed parts, hashed per request with FNV-1a (fixed, no per-process
//! seed: the same on every worker and replica) without allocating. The pick over endpoints is
//! `core::upstream::hash`.

use std::net::IpAddr;

/// One piece of a key template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Text(Box<str>),
    /// `$remote_addr`: the client address as text.
    RemoteAddr,
    /// `$binary_remote_addr`: its 4 or 16 bytes.
    BinaryRemoteAddr,
    /// `$request_uri`: path and query as received.
    RequestUri,
    /// `$uri`: the path, without query (nginx's is normalised; ours is as received).
    Uri,
    /// `$host`: the host, lower-cased, without port.
    Host,
    /// `$http_<name>`: a request field (`_` stands for `-`, any case); empty when absent.
    Header(Box<str>),
    /// `$cookie_<name>`: a cookie's value.
    Cookie(Box<str>),
    /// `$arg_<name>`: a query argument's value (as received, not decoded).
    Arg(Box<str>),
}

/// A compiled `upstream-hash-by` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HashKey {
    parts: Vec<Part>,
    /// The template as written, for the route dump.
    source: Box<str>,
}

impl std::fmt::Display for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.source)
    }
}

/// A piece of a text with nginx-style variables, as [`split_variables`] finds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token<'a> {
    /// Literal text (never empty).
    Text(&'a str),
    /// A variable's name, without `$` or braces (it may be empty: `$` alone).
    Variable(&'a str),
}

/// Splits `template` into literal text and `$name` / `${name}` variables, in order: the one
/// tokenizer of every template Sluice reads (hash keys, external-auth values). A name runs
/// over ASCII letters, digits and `_`; `${` without its `}` is an error.
pub fn split_variables(template: &str) -> Result<Vec<Token<'_>>, String> {
    let mut tokens = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        if at > 0 {
            tokens.push(Token::Text(&rest[..at]));
        }
        let after = &rest[at + 1..];
        let (name, tail) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {template:?}"))?;
            (&braced[..end], &braced[end + 1..])
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        tokens.push(Token::Variable(name));
        rest = tail;
    }
    if !rest.is_empty() {
        tokens.push(Token::Text(rest));
    }
    Ok(tokens)
}

/// What a key reads of a request.
pub trait KeySource {
    fn remote_ip(&self) -> IpAddr;
    fn host(&self) -> &str;
    fn path(&self) -> &str;
    fn query(&self) -> Option<&str>;
    /// The first field named `name` (ASCII case-insensitive).
    fn header(&self, name: &str) -> Option<&[u8]>;
}

impl HashKey {
    /// Parses `$var`, `${var}` and literal text mixed (`$host$request_uri`, `user-${arg_id}`).
    /// An unknown variable is refused, naming it.
    pub fn parse(template: &str) -> Result<HashKey, String> {
        let mut parts = Vec::new();
        for token in split_variables(template)? {
            parts.push(match token {
                Token::Text(t) => Part::Text(t.into()),
                Token::Variable(name) => variable(name)?,
            });
        }
        if parts.is_empty() {
            return Err("empty key".to_string());
        }
        Ok(HashKey {
            parts,
            source: template.into(),
        })
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The key's hash for `req`: FNV-1a over the key as nginx would build it.
    pub fn hash(&self, req: &dyn KeySource) -> u64 {
        let mut h = Fnv::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => h.write(t.as_bytes()),
                Part::RemoteAddr => {
                    let mut buf = [0u8; 64];
                    let n = ip_text(req.remote_ip(), &mut buf);
                    h.write(&buf[..n]);
                }
                Part::BinaryRemoteAddr => match req.remote_ip() {
                    IpAddr::V4(v4) => h.write(&v4.octets()),
                    IpAddr::V6(v6) => h.write(&v6.octets()),
                },
                Part::RequestUri => {
                    h.write(req.path().as_bytes());
                    if let Some(q) = req.query() {
                        h.write(b"?");
                        h.write(q.as_bytes());
                    }
                }
                Part::Uri => h.write(req.path().as_bytes()),
                Part::Host => {
                    for b in req.host().bytes() {
                        h.write(&[b.to_ascii_lowercase()]);
                    }
                }
                Part::Header(name) => h.write(req.header(name).unwrap_or(b"")),
                Part::Cookie(name) => {
                    let cookies = req.header("cookie").unwrap_or(b"");
                    h.write(pair_value(cookies, b';', name.as_bytes()).unwrap_or(b""));
                }
                Part::Arg(name) => {
                    let query = req.query().unwrap_or("").as_bytes();
                    h.write(pair_value(query, b'&', name.as_bytes()).unwrap_or(b""));
                }
            }
        }
        h.finish()
    }
}

fn variable(name: &str) -> Result<Part, String> {
    let field = |prefix: &str| {
        name.strip_prefix(prefix)
            .filter(|n| !n.is_empty())
            .map(Box::<str>::from)
    };
    Ok(match name {
        "remote_addr" => Part::RemoteAddr,
        "binary_remote_addr" => Part::BinaryRemoteAddr,
        "request_uri" => Part::RequestUri,
        "uri" => Part::Uri,
        "host" => Part::Host,
        _ => {
            if let Some(h) = field("http_") {
                Part::Header(h.replace('_', "-").into())
            } else if let Some(c) = field("cookie_") {
                Part::Cookie(c)
            } else if let Some(a) = field("arg_") {
                Part::Arg(a)
            } else {
                return Err(format!("unknown variable ${name}"));
            }
        }
    })
}

/// The value of `name` in a `sep`-separated list of `name=value` pairs (cookies, query).
fn pair_value<'a>(list: &'a [u8], sep: u8, name: &[u8]) -> Option<&'a [u8]> {
    list.split(|b| *b == sep).find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        (&pair[..eq] == name).then(|| &pair[eq + 1..])
    })
}

/// FNV-1a, 64 bits: fixed, fast on short keys, the same everywhere.
/// `ip` as text (`192.0.2.7`, as `Display` writes it) into `buf`; its length. IPv4 without
/// the formatting machinery (the common case of `$remote_addr`, on every hashed pick).
fn ip_text(ip: IpAddr, buf: &mut [u8; 64]) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            n
        }
        IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{ip}"));
            cursor.position() as usize
        }
    }
}

pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv::new()
    }
}

impl Fnv {
    pub fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_split_from_text() {
        use Token::{Text, Variable};
        assert_eq!(
            split_variables("user-${arg_id}$host/x$").unwrap(),
            [
                Text("user-"),
                Variable("arg_id"),
                Variable("host"),
                Text("/x"),
                Variable("")
            ]
        );
        assert_eq!(split_variables("plain").unwrap(), [Text("plain")]);
        assert!(split_variables("").unwrap().is_empty());
        assert!(split_variables("a${host").unwrap_err().contains("unclosed"));
        // Both readers refuse what they do not know, naming it.
        assert!(HashKey::parse("$nope").unwrap_err().contains("nope"));
        assert!(HashKey::parse("$").is_err());
    }

    #[test]
    fn ip_text_writes_what_display_writes() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut ips: Vec<IpAddr> = vec![
            [0, 0, 0, 0].into(),
            [255, 255, 255, 255].into(),
            [10, 0, 100, 9].into(),
            "2001:db8::1".parse().unwrap(),
            "::ffff:192.0.2.1".parse().unwrap(),
        ];
        for _ in 0..1000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            ips.push(IpAddr::from((rng as u32).to_be_bytes()));
        }
        for ip in ips {
            let mut buf = [0u8; 64];
            let n = ip_text(ip, &mut buf);
            assert_eq!(std::str::from_utf8(&buf[..n]).unwrap(), ip.to_string());
        }
    }
}
