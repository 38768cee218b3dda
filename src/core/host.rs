//! Host normalisation, shared by routing and certificate selection (SNI): one definition of
//! "the same host" (case, a port, a trailing dot) for both, and no dependency between them.

/// Longest DNS name.
pub const MAX_HOST: usize = 253;

/// Lower-cases `host` into `buf`, dropping a `:port` and one trailing dot. `None` when it
/// cannot be a host we route (too long, not ASCII).
pub fn normalize_host<'a>(host: &str, buf: &'a mut [u8; MAX_HOST]) -> Option<&'a str> {
    let host = if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop a port after them.
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        host.split_once(':').map_or(host, |(h, _)| h)
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.len() > MAX_HOST || !host.is_ascii() {
        return None;
    }
    let out = &mut buf[..host.len()];
    out.copy_from_slice(host.as_bytes());
    out.make_ascii_lowercase();
    std::str::from_utf8(out).ok()
}
