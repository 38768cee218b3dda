//! Arbitrary bytes as a chunked body, fed in arbitrary pieces: never a panic, never more data
//! out than came in, and the decoder never consumes more than it was given. Seeds (chunk
//! extensions, bare LF in the framing): `tests/fuzz/seeds/chunked_body/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::core::http1::body::{BodyDecoder, Decoded, Peer};
use sluice::core::http1::{Framing, Limits};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let mut decoder = BodyDecoder::new(Framing::Chunked, Peer::Client, &limits);
    let step = data.first().map_or(1, |b| (*b as usize % 7) + 1);
    let mut buffered: Vec<u8> = Vec::new();
    let mut out = 0usize;
    for piece in data.chunks(step) {
        buffered.extend_from_slice(piece);
        loop {
            match decoder.decode(&buffered) {
                Err(_) => return,
                Ok((used, decoded)) => {
                    assert!(used <= buffered.len());
                    let (stop, n) = match decoded {
                        Decoded::Data(d) => (false, d.len()),
                        Decoded::Done => (true, 0),
                        Decoded::NeedMore => (true, 0),
                    };
                    out += n;
                    buffered.drain(..used);
                    if stop {
                        break;
                    }
                }
            }
        }
    }
    assert!(out <= data.len());
});
