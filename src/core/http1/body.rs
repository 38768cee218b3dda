//! Message bodies on the wire: incremental decoders (Content-Length, chunked, close-delimited)
//! that hand out zero-copy views of payload bytes, and encoders that re-frame them.
//!
//! Decoders accept input split anywhere: feeding one byte at a time gives exactly the result
//! of feeding everything at once. Chunked syntax is strict (RFC 9112 §7.1): hex sizes with
//! overflow checks, extensions bounded and held to the `chunk-ext` grammar, CRLF ending every
//! line (a bare LF anywhere is an error, found as soon as it arrives), bounded trailers.
//! Extensions are validated and dropped: the encoder never forwards one.

use super::request::is_tchar;
use super::{Framing, Limits};
use crate::core::error::HttpError;

/// Who sends the body: decides what an error is (the client's 400/413/431 or the upstream's
/// 502).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    Client,
    Upstream,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// Payload bytes (a view into the input).
    Data(&'a [u8]),
    /// The body is complete.
    Done,
    /// Everything given was consumed; more input is needed.
    NeedMore,
}

/// Where a chunked decoder is.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `digits` so far, value so far.
    Size { digits: u8, value: u64 },
    /// After the size: the extensions until CR (RFC 9112 §7.1.1); `ext` bytes seen so far.
    Ext { value: u64, ext: usize, at: Ext },
    /// Saw the CR ending the size line.
    SizeLf { value: u64 },
    /// Payload bytes remaining in this chunk.
    Data { remaining: u64 },
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// In the trailer section, at the start of a line.
    TrailerLineStart,
    /// Inside a trailer line; CR seen when `cr`.
    TrailerLine { cr: bool },
    /// Saw the CR of the final empty line.
    FinalLf,
}

/// Where inside `chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )`
/// the decoder is. Names are tokens, values tokens or quoted strings; whitespace (BWS) is only
/// allowed next to `;` and `=`, so a line never ends in whitespace. Anything else is an error.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Ext {
    /// Whitespace after the size or after a value: only more of it or `;` may follow.
    BeforeSemi,
    /// After `;` (and maybe whitespace): a name must start.
    BeforeName,
    /// Inside a name.
    Name,
    /// Whitespace after a name: `=` or `;` must follow.
    AfterName,
    /// After `=` (and maybe whitespace): a value must start.
    BeforeValue,
    /// Inside a token value.
    Token,
    /// Inside a quoted-string value; `escaped` right after a backslash.
    Quoted { escaped: bool },
    /// Right after the closing quote of a value.
    AfterQuoted,
}

#[derive(Clone, Debug)]
enum State {
    Length { remaining: u64 },
    Chunked(Chunk),
    Close,
    Done,
}

/// Incremental body decoder.
#[derive(Clone, Debug)]
pub struct BodyDecoder {
    state: State,
    peer: Peer,
    max_chunk_ext: usize,
    max_trailer_bytes: usize,
    max_body_bytes: Option<u64>,
    /// Payload bytes decoded so far (chunked), for `max_body_bytes`.
    decoded: u64,
    /// Raw trailer lines of a chunked body, validated.
    trailers: Vec<u8>,
    /// Start of the current trailer line inside `trailers`.
    trailer_line: usize,
}

/// Chunk sizes beyond 16 hex digits cannot fit a u64.
const MAX_HEX_DIGITS: u8 = 16;

impl BodyDecoder {
    pub fn new(framing: Framing, peer: Peer, limits: &Limits) -> Self {
        let state = match framing {
            Framing::None | Framing::Length(0) => State::Done,
            Framing::Length(n) => State::Length { remaining: n },
            Framing::Chunked => State::Chunked(Chunk::Size {
                digits: 0,
                value: 0,
            }),
            Framing::CloseDelimited => State::Close,
        };
        BodyDecoder {
            state,
            peer,
            max_chunk_ext: limits.max_chunk_ext,
            max_trailer_bytes: limits.max_trailer_bytes,
            max_body_bytes: if peer == Peer::Client {
                limits.max_body_bytes
            } else {
                None
            },
            decoded: 0,
            trailers: Vec::new(),
            trailer_line: 0,
        }
    }

    fn error(&self, detail: &'static str) -> HttpError {
        match self.peer {
            Peer::Client => HttpError::client(400, detail),
            Peer::Upstream => HttpError::upstream(502, detail),
        }
    }

    /// Consumes a prefix of `input` and says what it was. Call again with the rest until
    /// `NeedMore` or `Done`.
    pub fn decode<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Decoded<'a>), HttpError> {
        match &mut self.state {
            State::Done => Ok((0, Decoded::Done)),
            State::Close => {
                if input.is_empty() {
                    Ok((0, Decoded::NeedMore))
                } else {
                    Ok((input.len(), Decoded::Data(input)))
                }
            }
            State::Length { remaining } => {
                if input.is_empty() {
                    return Ok((0, Decoded::NeedMore));
                }
                let take = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                *remaining -= take as u64;
                if *remaining == 0 {
                    self.state = State::Done;
                }
                Ok((take, Decoded::Data(&input[..take])))
            }
            State::Chunked(_) => self.decode_chunked(input),
        }
    }

    fn decode_chunked<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Decoded<'a>), HttpError> {
        let mut i = 0;
        while i < input.len() {
            let State::Chunked(chunk) = self.state else {
                return Ok((i, Decoded::Done));
            };
            let b = input[i];
            let next = match chunk {
                Chunk::Size { digits, value } => match hex_value(b) {
                    Some(d) => {
                        if digits >= MAX_HEX_DIGITS || value > (u64::MAX >> 4) {
                            return Err(self.error("chunk size too large"));
                        }
                        Chunk::Size {
                            digits: digits + 1,
                            value: (value << 4) | u64::from(d),
                        }
                    }
                    None if digits == 0 => return Err(self.error("invalid chunk size")),
                    None => match b {
                        b'\r' => Chunk::SizeLf { value },
                        b';' => Chunk::Ext {
                            value,
                            ext: 1,
                            at: Ext::BeforeName,
                        },
                        b' ' | b'\t' => Chunk::Ext {
                            value,
                            ext: 1,
                            at: Ext::BeforeSemi,
                        },
                        _ => return Err(self.error("invalid chunk size")),
                    },
                },
                Chunk::Ext { value, ext, at } => {
                    if ext >= self.max_chunk_ext {
                        return Err(self.error("chunk extension too long"));
                    }
                    if b == b'\r' {
                        if !matches!(at, Ext::Name | Ext::Token | Ext::AfterQuoted) {
                            return Err(self.error("malformed chunk extension"));
                        }
                        Chunk::SizeLf { value }
                    } else {
                        let at = ext_step(at, b)
                            .ok_or_else(|| self.error("malformed chunk extension"))?;
                        Chunk::Ext {
                            value,
                            ext: ext + 1,
                            at,
                        }
                    }
                }
                Chunk::SizeLf { value } => {
                    if b != b'\n' {
                        return Err(self.error("chunk size line without CRLF"));
                    }
                    if value == 0 {
                        Chunk::TrailerLineStart
                    } else {
                        if let Some(max) = self.max_body_bytes
                            && self.decoded.saturating_add(value) > max
                        {
                            return Err(HttpError::client(413, "request body too large"));
                        }
                        Chunk::Data { remaining: value }
                    }
                }
                Chunk::Data { remaining } => {
                    // Hand out as much payload as is here, in one view.
                    let avail = input.len() - i;
                    let take = usize::try_from(remaining).unwrap_or(usize::MAX).min(avail);
                    let left = remaining - take as u64;
                    self.decoded += take as u64;
                    self.state = State::Chunked(if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data { remaining: left }
                    });
                    // The framing bytes before it are consumed along with the data.
                    return Ok((i + take, Decoded::Data(&input[i..i + take])));
                }
                Chunk::DataCr => {
                    if b != b'\r' {
                        return Err(self.error("chunk data not followed by CRLF"));
                    }
                    Chunk::DataLf
                }
                Chunk::DataLf => {
                    if b != b'\n' {
                        return Err(self.error("chunk data not followed by CRLF"));
                    }
                    Chunk::Size {
                        digits: 0,
                        value: 0,
                    }
                }
                Chunk::TrailerLineStart => {
                    if b == b'\r' {
                        Chunk::FinalLf
                    } else if b == b'\n' {
                        // RFC 9112 §7.1: every line of the framing ends in CRLF. A bare LF
                        // here would otherwise start a trailer line that never ends.
                        return Err(self.error("bare LF in chunked framing"));
                    } else {
                        self.trailer_line = self.trailers.len();
                        self.push_trailer(b)?;
                        Chunk::TrailerLine { cr: false }
                    }
                }
                Chunk::TrailerLine { cr } => {
                    if cr {
                        if b != b'\n' {
                            return Err(self.error("bare CR in trailer"));
                        }
                        self.push_trailer(b)?;
                        self.check_trailer_line()?;
                        Chunk::TrailerLineStart
                    } else if b == b'\r' {
                        self.push_trailer(b)?;
                        Chunk::TrailerLine { cr: true }
                    } else if b == b'\n' || b == 0 {
                        return Err(self.error("invalid byte in trailer"));
                    } else {
                        self.push_trailer(b)?;
                        Chunk::TrailerLine { cr: false }
                    }
                }
                Chunk::FinalLf => {
                    if b != b'\n' {
                        return Err(self.error("chunked body not terminated by CRLF"));
                    }
                    self.state = State::Done;
                    return Ok((i + 1, Decoded::Done));
                }
            };
            // The `Data` arm returns early; every other arm consumed one byte.
            self.state = State::Chunked(next);
            i += 1;
        }
        Ok((i, Decoded::NeedMore))
    }

    fn push_trailer(&mut self, b: u8) -> Result<(), HttpError> {
        if self.trailers.len() >= self.max_trailer_bytes {
            return Err(match self.peer {
                Peer::Client => HttpError::client(431, "trailer section too large"),
                Peer::Upstream => HttpError::upstream(502, "trailer section too large"),
            });
        }
        self.trailers.push(b);
        Ok(())
    }

    /// A complete trailer line (with its CRLF) is at `trailers[trailer_line..]`: it must be a
    /// valid field line — token name, colon, no whitespace before the colon, no obs-fold.
    fn check_trailer_line(&self) -> Result<(), HttpError> {
        let line = &self.trailers[self.trailer_line..self.trailers.len() - 2];
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(self.error("trailer line without a colon"));
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(self.error("invalid trailer field name"));
        }
        let value = &line[colon + 1..];
        if value.iter().any(|&b| b == 0x7f || (b < 0x20 && b != b'\t')) {
            return Err(self.error("invalid trailer field value"));
        }
        Ok(())
    }

    /// The peer closed: fine for a close-delimited body (which ends here) and for a body that
    /// is already complete; a truncated Content-Length or chunked body is an error.
    pub fn eof(&mut self) -> Result<(), HttpError> {
        match self.state {
            State::Done => Ok(()),
            State::Close => {
                self.state = State::Done;
                Ok(())
            }
            _ => Err(self.error("connection closed before the body was complete")),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// The bytes a Content-Length body still has to come (`None` for other framings, and
    /// once it is complete).
    pub fn length_remaining(&self) -> Option<u64> {
        match self.state {
            State::Length { remaining } => Some(remaining),
            _ => None,
        }
    }

    /// Counts up to `n` bytes of a Content-Length body as decoded without seeing them: they
    /// went from peer to peer without passing through here (an engine spliced them, see
    /// `Conn::passable`). Returns how many were counted (0 for other framings).
    pub fn skip(&mut self, n: u64) -> u64 {
        let State::Length { remaining } = &mut self.state else {
            return 0;
        };
        let n = n.min(*remaining);
        *remaining -= n;
        if *remaining == 0 {
            self.state = State::Done;
        }
        n
    }

    /// The validated trailer lines of a chunked body (`Name: value\r\n` each), once decoded.
    pub fn trailers(&self) -> &[u8] {
        &self.trailers
    }
}

/// One byte of a chunk extension, not CR (which ends the line where the grammar allows it).
/// `None` when the byte is not allowed where the extension is.
fn ext_step(at: Ext, b: u8) -> Option<Ext> {
    let ws = b == b' ' || b == b'\t';
    Some(match at {
        Ext::BeforeSemi | Ext::AfterQuoted if ws => Ext::BeforeSemi,
        Ext::BeforeSemi | Ext::AfterQuoted | Ext::Token | Ext::Name | Ext::AfterName
            if b == b';' =>
        {
            Ext::BeforeName
        }
        Ext::BeforeName if ws => Ext::BeforeName,
        Ext::BeforeName | Ext::Name if is_tchar(b) => Ext::Name,
        Ext::Name | Ext::AfterName if ws => Ext::AfterName,
        Ext::Name | Ext::AfterName if b == b'=' => Ext::BeforeValue,
        Ext::BeforeValue if ws => Ext::BeforeValue,
        Ext::BeforeValue if b == b'"' => Ext::Quoted { escaped: false },
        Ext::BeforeValue | Ext::Token if is_tchar(b) => Ext::Token,
        Ext::Token if ws => Ext::BeforeSemi,
        // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
        Ext::Quoted { escaped: true } if ws || (0x21..=0x7e).contains(&b) || b >= 0x80 => {
            Ext::Quoted { escaped: false }
        }
        Ext::Quoted { escaped: false } if b == b'"' => Ext::AfterQuoted,
        Ext::Quoted { escaped: false } if b == b'\\' => Ext::Quoted { escaped: true },
        // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
        Ext::Quoted { escaped: false } if ws || (0x21..=0x7e).contains(&b) || b >= 0x80 => {
            Ext::Quoted { escaped: false }
        }
        _ => return None,
    })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Re-frames payload for the wire. Chunks are written with their size only (never an
/// extension), and the last chunk only by [`BodyEncoder::finish`]: a body that fails to decode
/// never reaches the peer as a complete message.
#[derive(Clone, Debug)]
pub struct BodyEncoder {
    chunked: bool,
}

impl BodyEncoder {
    pub fn new(framing: Framing) -> Self {
        BodyEncoder {
            chunked: framing == Framing::Chunked,
        }
    }

    /// Whether payload goes out as it is (no chunk framing added): then bytes can be handed
    /// over without [`BodyEncoder::encode`] copying them.
    pub fn passes_through(&self) -> bool {
        !self.chunked
    }

    /// Appends `data` framed: one chunk when chunked (never an empty one), as is otherwise.
    pub fn encode(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if data.is_empty() {
            return;
        }
        if self.chunked {
            push_hex(data.len() as u64, out);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(data);
        }
    }

    /// Ends the body: the last chunk and trailers when chunked, nothing otherwise.
    pub fn finish(&mut self, trailers: &[u8], out: &mut Vec<u8>) {
        if self.chunked {
            out.extend_from_slice(b"0\r\n");
            out.extend_from_slice(trailers);
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn push_hex(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}
