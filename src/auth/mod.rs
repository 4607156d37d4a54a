//! The authentication and authorisation seam: one hook on CONNECT, PUBLISH and
//! SUBSCRIBE. The default allows everything; a deployment plugs in its own.

pub mod acl;
pub mod password;

use crate::protocol::{Connect, ConnectReturnCode};
use std::net::SocketAddr;

/// Decides who may connect, publish and subscribe. Called on the shard that handles
/// the client, so implementations must be cheap and must not block.
pub trait Authenticator: Send + Sync + 'static {
    /// The CONNACK code for this CONNECT: `Accepted`, or the refusal to send.
    fn connect(&self, _connect: &Connect, _peer: SocketAddr) -> ConnectReturnCode {
        ConnectReturnCode::Accepted
    }

    /// Whether this client may publish to this topic. A refused QoS 1/2 publish is
    /// still acknowledged (MQTT 3.1.1 has no negative ack) but not routed.
    fn publish(&self, _client_id: &str, _topic: &str) -> bool {
        true
    }

    /// Whether this client may subscribe to this filter; refused filters get 0x80.
    fn subscribe(&self, _client_id: &str, _filter: &str) -> bool {
        true
    }
}

/// Allows every client everything: the broker's default.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Authenticator for AllowAll {}
