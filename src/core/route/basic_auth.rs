//! HTTP basic authentication as ingress-nginx configures it (`auth-type: basic`): users and
//! password hashes parsed from an htpasswd file (or a user → hash map) once, when the snapshot
//! is built; a request's `Authorization: Basic` credentials checked against them.
//!
//! Formats: bcrypt (`$2y$`, `$2a$`, `$2b$`), `{SHA}` (base64 SHA-1), `$apr1$` (Apache
//! MD5-crypt), `$1$` (MD5-crypt) and `{PLAIN}`. Digests are compared in constant time
//! (`subtle`); bcrypt's own check is constant-time too.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use md5::{Digest as _, Md5};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// One stored password hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    Bcrypt(String),
    Sha1([u8; 20]),
    /// `$apr1$` or `$1$`: the magic, the salt and the encoded digest.
    Md5Crypt {
        magic: &'static str,
        salt: String,
        digest: String,
    },
    Plain(String),
}

/// Hashes are not printed.
impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PasswordHash::Bcrypt(_) => "bcrypt",
            PasswordHash::Sha1(_) => "{SHA}",
            PasswordHash::Md5Crypt { magic, .. } => magic,
            PasswordHash::Plain(_) => "{PLAIN}",
        })
    }
}

impl PasswordHash {
    pub fn parse(hash: &str) -> Result<PasswordHash, String> {
        if hash.starts_with("$2y$") || hash.starts_with("$2a$") || hash.starts_with("$2b$") {
            // Checked now, so a bad one is reported instead of failing every request.
            hash.parse::<bcrypt::HashParts>()
                .map_err(|e| format!("bad bcrypt hash: {e}"))?;
            return Ok(PasswordHash::Bcrypt(hash.to_string()));
        }
        if let Some(b64) = hash.strip_prefix("{SHA}") {
            let bytes = STANDARD
                .decode(b64)
                .map_err(|_| "bad {SHA} hash: not base64".to_string())?;
            let digest: [u8; 20] = bytes
                .try_into()
                .map_err(|_| "bad {SHA} hash: not 20 bytes".to_string())?;
            return Ok(PasswordHash::Sha1(digest));
        }
        if let Some(plain) = hash.strip_prefix("{PLAIN}") {
            return Ok(PasswordHash::Plain(plain.to_string()));
        }
        for magic in ["$apr1$", "$1$"] {
            if let Some(rest) = hash.strip_prefix(magic) {
                let (salt, digest) = rest
                    .split_once('$')
                    .ok_or_else(|| format!("bad {magic} hash: no salt"))?;
                if salt.len() > 8 || digest.len() != 22 {
                    return Err(format!("bad {magic} hash: wrong length"));
                }
                return Ok(PasswordHash::Md5Crypt {
                    magic,
                    salt: salt.to_string(),
                    digest: digest.to_string(),
                });
            }
        }
        Err("unsupported hash format (bcrypt, {SHA}, $apr1$, $1$ or {PLAIN} are)".to_string())
    }

    /// Whether `password` matches, comparing in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        match self {
            PasswordHash::Bcrypt(hash) => bcrypt::verify(password, hash).unwrap_or(false),
            PasswordHash::Sha1(digest) => {
                let got: [u8; 20] = Sha1::digest(password).into();
                got.ct_eq(digest).into()
            }
            PasswordHash::Md5Crypt {
                magic,
                salt,
                digest,
            } => {
                let got = md5_crypt(password, magic.as_bytes(), salt.as_bytes());
                got.as_bytes().ct_eq(digest.as_bytes()).into()
            }
            PasswordHash::Plain(plain) => password.ct_eq(plain.as_bytes()).into(),
        }
    }
}

const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The 22-character digest of Poul-Henning Kamp's MD5-crypt (`$1$`), which Apache's `$apr1$`
/// runs with its own magic string.
fn md5_crypt(password: &[u8], magic: &[u8], salt: &[u8]) -> String {
    let alt = {
        let mut h = Md5::new();
        h.update(password);
        h.update(salt);
        h.update(password);
        h.finalize()
    };
    let mut h = Md5::new();
    h.update(password);
    h.update(magic);
    h.update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        h.update(&alt[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i > 0 {
        if i & 1 == 1 {
            h.update([0u8]);
        } else {
            h.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut fin = h.finalize();
    for round in 0..1000 {
        let mut h = Md5::new();
        if round & 1 == 1 {
            h.update(password);
        } else {
            h.update(fin);
        }
        if round % 3 != 0 {
            h.update(salt);
        }
        if round % 7 != 0 {
            h.update(password);
        }
        if round & 1 == 1 {
            h.update(fin);
        } else {
            h.update(password);
        }
        fin = h.finalize();
    }
    let mut out = String::with_capacity(22);
    let mut put = |v: u32, n: usize| {
        let mut v = v;
        for _ in 0..n {
            out.push(char::from(ITOA64[(v & 0x3f) as usize]));
            v >>= 6;
        }
    };
    let f = |i: usize| u32::from(fin[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put((f(a) << 16) | (f(b) << 8) | f(c), 4);
    }
    put(f(11), 2);
    out
}

/// User names and their password hashes.
pub type Users = Vec<(String, PasswordHash)>;

/// Users and their hashes, and the realm of the challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BasicAuth {
    /// `WWW-Authenticate: Basic realm="<realm>"` (no `"` or `\`, checked when compiled).
    pub realm: String,
    /// `None`: the Secret is missing or unreadable; every request gets 503, as in
    /// ingress-nginx.
    pub users: Option<Users>,
}

/// What basic authentication says about a request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    Allowed,
    /// 401 with the challenge.
    Challenge,
    /// The Secret could not be used: 503.
    Unavailable,
}

impl BasicAuth {
    /// Checks the `Authorization` field of a request.
    pub fn check(&self, authorization: Option<&[u8]>) -> AuthOutcome {
        let Some(users) = &self.users else {
            return AuthOutcome::Unavailable;
        };
        let ok = authorization
            .and_then(credentials)
            .is_some_and(|(user, password)| {
                users
                    .iter()
                    .find(|(name, _)| name.as_bytes() == user.as_slice())
                    .is_some_and(|(_, hash)| hash.verify(&password))
            });
        if ok {
            AuthOutcome::Allowed
        } else {
            AuthOutcome::Challenge
        }
    }
}

/// `Basic <base64(user:password)>` → user and password.
fn credentials(value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(token.trim()).ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

/// Parses an htpasswd file: `user:hash` per line; blank lines and `#` comments skipped. A
/// bad line is returned as `(line number, why)` and skipped.
pub fn parse_htpasswd(text: &str) -> (Users, Vec<(usize, String)>) {
    let mut users = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((user, hash)) = line.split_once(':') else {
            bad.push((i + 1, "no ':' between user and hash".to_string()));
            continue;
        };
        match PasswordHash::parse(hash.trim()) {
            Ok(h) => users.push((user.to_string(), h)),
            Err(why) => bad.push((i + 1, why)),
        }
    }
    (users, bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))).into_bytes()
    }

    #[test]
    fn formats_verify() {
        // Vectors from `openssl passwd -apr1 / -1 -salt abcdefgh secret` and
        // `openssl dgst -sha1 -binary | base64`.
        let bcrypt_hash = bcrypt::hash("secret", 4)
            .unwrap()
            .replacen("$2b$", "$2y$", 1);
        let file = format!(
            "# users\napr:$apr1$abcdefgh$h9FWgUz3n9YxylKLlR5SQ/\nmd5:$1$abcdefgh$cHJi5PXp/ki/ktXzqlk6I1\n\
             sha:{{SHA}}5en6G6MezRroT3XKqkdPOmY/BfQ=\nbc:{bcrypt_hash}\nplain:{{PLAIN}}secret\n\
             des:abJnggxhB/yWI\nbroken\n"
        );
        let (users, bad) = parse_htpasswd(&file);
        assert_eq!(users.len(), 5, "{bad:?}");
        assert_eq!(
            bad.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            [7, 8],
            "{bad:?}"
        );
        let auth = BasicAuth {
            realm: "r".into(),
            users: Some(users),
        };
        for user in ["apr", "md5", "sha", "bc", "plain"] {
            assert_eq!(
                auth.check(Some(&header(user, "secret"))),
                AuthOutcome::Allowed,
                "{user}"
            );
            assert_eq!(
                auth.check(Some(&header(user, "Secret"))),
                AuthOutcome::Challenge,
                "{user}"
            );
        }
        assert_eq!(auth.check(None), AuthOutcome::Challenge);
        assert_eq!(
            auth.check(Some(&header("nobody", "secret"))),
            AuthOutcome::Challenge
        );
        assert_eq!(auth.check(Some(b"Basic !!!")), AuthOutcome::Challenge);
        assert_eq!(auth.check(Some(b"Bearer abc")), AuthOutcome::Challenge);
        let missing = BasicAuth {
            realm: "r".into(),
            users: None,
        };
        assert_eq!(missing.check(None), AuthOutcome::Unavailable);
    }

    #[test]
    fn malformed_hashes_are_refused() {
        for bad in [
            "$2y$10$short",
            "{SHA}notbase64!",
            "{SHA}YWJj",
            "$apr1$toolongsalt$h9FWgUz3n9YxylKLlR5SQ/",
            "$apr1$nosalt",
            "$6$salt$sha512crypt",
        ] {
            assert!(PasswordHash::parse(bad).is_err(), "{bad}");
        }
    }
}
