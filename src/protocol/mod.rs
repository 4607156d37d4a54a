//! The MQTT 3.1.1 / 3.1 wire protocol, sans-IO: packet types, decoding from a byte
//! buffer, encoding into one, and the rules for topic names and filters.
//!
//! Nothing here touches a socket. The read loop owns a `BytesMut`, calls [`decode`]
//! until it answers `Ok(None)` ("need more bytes"), and acts on each packet.

mod decode;
mod encode;
mod packet;
pub mod properties;
pub mod topic;

pub use decode::{decode, decode_with, DecodeError, DecodeOptions};
pub use encode::{encode_publish, encoded_len};
pub use packet::*;
