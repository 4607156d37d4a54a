//! Raw packet bytes for the codec's tests.

use super::encode::write_remaining_length;
use bytes::{BufMut, BytesMut};

/// A packet from its first byte and its body (the remaining length is computed).
pub(super) fn raw(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(first);
    write_remaining_length(&mut out, body.len());
    out.put_slice(body);
    out.to_vec()
}

/// A 2-byte length prefix and the bytes.
pub(super) fn field(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}
