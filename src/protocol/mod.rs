//! The MQTT 5.0 / 3.1.1 / 3.1 wire protocol, sans-IO: packet types, decoding from a
//! byte buffer, encoding into one, properties, reason codes, and the rules for topic
//! names and filters.
//!
//! Nothing here touches a socket. The read loop owns a `BytesMut`, calls [`decode`]
//! until it answers `Ok(None)` ("need more bytes"), and acts on each packet.

mod decode;
mod decode_v5;
mod encode;
mod encode_v5;
mod packet;
pub mod properties;
mod reason;
#[cfg(test)]
mod test_bytes;
pub mod topic;

pub use decode::{decode, decode_with, peek_connect_level, DecodeError, DecodeOptions};
pub use encode::{encode_publish, encoded_len, encoded_len_v5};
pub use encode_v5::{encode_publish_v5, PublishV5Props};
pub use packet::*;
pub use reason::ReasonCode;
