//! SCRAM-SHA-512 (RFC 5802 with SHA-512) as an MQTT 5.0 enhanced authentication
//! method, over the password file's `$7$` entries.
//!
//! A `$7$` hash is PBKDF2-HMAC-SHA512 of the password with the entry's salt and
//! iteration count, 64 bytes long: exactly SCRAM-SHA-512's `SaltedPassword`. So the
//! broker proves and checks knowledge of the password without ever seeing it, with
//! the file `shardmq passwd` and `mosquitto_passwd` write. `$6$` entries cannot take
//! part (their hash is not a `SaltedPassword`): such a user is refused this method.
//!
//! The exchange, each message in the Authentication Data of the packet named:
//! - CONNECT (or AUTH 0x19): client-first `n,,n={user},r={client nonce}`;
//! - AUTH 0x18 from the broker: server-first `r={nonce},s={salt},i={iterations}`;
//! - AUTH 0x18 from the client: client-final `c=biws,r={nonce},p={proof}`;
//! - CONNACK 0x00 (or AUTH 0x00): server-final `v={server signature}`.
//!
//! Channel binding is not offered (`n` or `y` GS2 flags only). Usernames are compared
//! as given, and passwords are used as the client sends them (no SASLprep, as
//! `mosquitto_passwd` hashes the bytes typed).

use super::password::{PasswordHash, MAX_ITERATIONS};
use super::{AuthExchange, AuthStep};
use crate::protocol::ReasonCode;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use bytestring::ByteString;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;

/// The method's name in the Authentication Method property.
pub const METHOD: &str = "SCRAM-SHA-512";

type HmacSha512 = Hmac<Sha512>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 64] {
    let mut mac = HmacSha512::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// What the broker knows of one user for SCRAM: derived from its `$7$` hash.
#[derive(Clone)]
pub struct Credentials {
    pub salt: Vec<u8>,
    pub iterations: u32,
    stored_key: [u8; 64],
    server_key: [u8; 64],
}

impl Credentials {
    /// From a password file entry; `None` for a `$6$` entry.
    pub fn from_hash(hash: &PasswordHash) -> Option<Credentials> {
        match hash {
            PasswordHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => Some(Credentials::from_salted(salt.clone(), *iterations, hash)),
            PasswordHash::Sha512 { .. } => None,
        }
    }

    /// From `SaltedPassword` = PBKDF2-HMAC-SHA512(password, salt, iterations).
    pub fn from_salted(salt: Vec<u8>, iterations: u32, salted: &[u8]) -> Credentials {
        let client_key = hmac(salted, b"Client Key");
        Credentials {
            salt,
            iterations,
            stored_key: Sha512::digest(client_key).into(),
            server_key: hmac(salted, b"Server Key"),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print keys into logs.
        f.debug_struct("Credentials")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Finds a user's credentials. `Err(())` for a user that exists but cannot use SCRAM
/// (a `$6$` entry), `Ok(None)` for an unknown user.
pub type Lookup = dyn Fn(&str) -> Result<Option<Credentials>, ()> + Send + Sync;

/// One exchange on the broker's side.
pub struct ScramServer {
    state: State,
    /// Salt and iterations shown for unknown users, so that they look like real ones.
    decoy_key: [u8; 32],
    lookup: std::sync::Arc<Lookup>,
}

// One per connection, and only while its exchange lasts: not worth a box.
#[allow(clippy::large_enum_variant)]
enum State {
    /// Waiting for client-first.
    Start,
    /// server-first sent; waiting for client-final.
    Challenged {
        user: String,
        /// `None`: an unknown user, refused once the client has answered.
        creds: Option<Credentials>,
        /// The GS2 header, which client-final echoes base64-encoded.
        gs2: String,
        client_first_bare: String,
        server_first: String,
        nonce: String,
    },
    Done,
}

impl ScramServer {
    pub fn new(lookup: std::sync::Arc<Lookup>, decoy_key: [u8; 32]) -> ScramServer {
        ScramServer {
            state: State::Start,
            decoy_key,
            lookup,
        }
    }

    fn first(&mut self, data: &[u8]) -> Result<AuthStep, &'static str> {
        let text = std::str::from_utf8(data).map_err(|_| "client-first is not UTF-8")?;
        // gs2-header: cbind-flag "," [authzid] ","
        let mut parts = text.splitn(3, ',');
        let flag = parts.next().unwrap_or("");
        let authzid = parts.next().ok_or("client-first has no GS2 header")?;
        let bare = parts.next().ok_or("client-first has no GS2 header")?;
        if flag != "n" && flag != "y" {
            return Err("channel binding is not offered");
        }
        let mut fields = bare.split(',');
        let user = fields
            .next()
            .and_then(|f| f.strip_prefix("n="))
            .ok_or("client-first has no username")?;
        let user = unescape(user).ok_or("bad username encoding")?;
        let client_nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic() && b != b','))
            .ok_or("client-first has no nonce")?;
        if let Some(az) = authzid.strip_prefix("a=") {
            if unescape(az).as_deref() != Some(user.as_str()) {
                return Err("authorization identity differs from the username");
            }
        } else if !authzid.is_empty() {
            return Err("bad GS2 header");
        }
        if fields.any(|f| f.starts_with("m=")) {
            return Err("mandatory extension not supported");
        }
        let creds = match (self.lookup)(&user) {
            Ok(c) => c,
            Err(()) => return Ok(AuthStep::Fail(ReasonCode::NOT_AUTHORIZED)),
        };
        let (salt, iterations) = match &creds {
            Some(c) => (c.salt.clone(), c.iterations),
            None => {
                let mut h = Sha512::new();
                h.update(self.decoy_key);
                h.update(user.as_bytes());
                (
                    h.finalize()[..12].to_vec(),
                    super::password::DEFAULT_ITERATIONS,
                )
            }
        };
        if iterations > MAX_ITERATIONS {
            return Ok(AuthStep::Fail(ReasonCode::NOT_AUTHORIZED));
        }
        let mut server_nonce = [0u8; 24];
        getrandom::getrandom(&mut server_nonce).map_err(|_| "no random numbers")?;
        let nonce = format!("{client_nonce}{}", B64.encode(server_nonce));
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(&salt));
        let gs2_len = text.len() - bare.len();
        self.state = State::Challenged {
            user,
            creds,
            gs2: text[..gs2_len].to_string(),
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok(AuthStep::Continue(Some(Bytes::from(server_first))))
    }

    fn last(&mut self, data: &[u8]) -> Result<AuthStep, &'static str> {
        let State::Challenged {
            user,
            creds,
            gs2,
            client_first_bare,
            server_first,
            nonce,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err("no exchange in progress");
        };
        let text = std::str::from_utf8(data).map_err(|_| "client-final is not UTF-8")?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or("client-final has no proof")?;
        let mut fields = without_proof.split(',');
        let binding = fields
            .next()
            .and_then(|f| f.strip_prefix("c="))
            .ok_or("client-final has no channel binding")?;
        if B64.decode(binding).ok().as_deref() != Some(gs2.as_bytes()) {
            return Err("channel binding differs from client-first");
        }
        let r = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or("client-final has no nonce")?;
        if r != nonce {
            return Err("nonce differs");
        }
        let proof = B64.decode(proof).map_err(|_| "proof is not base64")?;
        let Some(creds) = creds else {
            return Ok(AuthStep::Fail(ReasonCode::NOT_AUTHORIZED));
        };
        if proof.len() != 64 {
            return Ok(AuthStep::Fail(ReasonCode::NOT_AUTHORIZED));
        }
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac(&creds.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 64];
        for (k, (p, s)) in client_key.iter_mut().zip(proof.iter().zip(signature)) {
            *k = p ^ s;
        }
        let stored: [u8; 64] = Sha512::digest(client_key).into();
        if !bool::from(stored.ct_eq(&creds.stored_key)) {
            return Ok(AuthStep::Fail(ReasonCode::NOT_AUTHORIZED));
        }
        let server_signature = hmac(&creds.server_key, auth_message.as_bytes());
        Ok(AuthStep::Success {
            username: ByteString::from(user),
            data: Some(Bytes::from(format!("v={}", B64.encode(server_signature)))),
        })
    }
}

impl AuthExchange for ScramServer {
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep {
        let data = data.unwrap_or_default();
        let result = match self.state {
            State::Start => self.first(data),
            State::Challenged { .. } => self.last(data),
            State::Done => Err("exchange already over"),
        };
        result.unwrap_or_else(|why| {
            tracing::debug!(method = METHOD, why, "authentication exchange refused");
            self.state = State::Done;
            AuthStep::Fail(ReasonCode::NOT_AUTHORIZED)
        })
    }
}

/// `saslname` decoding: `=2C` is `,` and `=3D` is `=`; any other `=` is invalid.
fn unescape(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return None,
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    (!out.is_empty()).then_some(out)
}

/// The client's side, for tests and the benchmark's load generator: the messages a
/// SCRAM-SHA-512 client sends for `user` and `password`.
pub mod client {
    use super::*;

    /// A client exchange in progress: `first()` was sent.
    pub struct ScramClient {
        password: Vec<u8>,
        first_bare: String,
        nonce: String,
        salted: Option<[u8; 64]>,
        auth_message: String,
    }

    impl ScramClient {
        pub fn new(user: &str, password: &[u8], nonce: &str) -> ScramClient {
            let user = user.replace('=', "=3D").replace(',', "=2C");
            ScramClient {
                password: password.to_vec(),
                first_bare: format!("n={user},r={nonce}"),
                nonce: nonce.to_string(),
                salted: None,
                auth_message: String::new(),
            }
        }

        /// client-first.
        pub fn first(&self) -> String {
            format!("n,,{}", self.first_bare)
        }

        /// client-final for this server-first, or why it is unacceptable.
        pub fn last(&mut self, server_first: &str) -> Result<String, &'static str> {
            let mut nonce = None;
            let mut salt = None;
            let mut iterations = None;
            for f in server_first.split(',') {
                if let Some(v) = f.strip_prefix("r=") {
                    nonce = Some(v);
                } else if let Some(v) = f.strip_prefix("s=") {
                    salt = B64.decode(v).ok();
                } else if let Some(v) = f.strip_prefix("i=") {
                    iterations = v.parse::<u32>().ok();
                }
            }
            let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
                return Err("bad server-first");
            };
            if !nonce.starts_with(&self.nonce) {
                return Err("server nonce does not extend ours");
            }
            let mut salted = [0u8; 64];
            pbkdf2::pbkdf2_hmac::<Sha512>(&self.password, &salt, iterations, &mut salted);
            let without_proof = format!("c=biws,r={nonce}");
            self.auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
            let client_key = hmac(&salted, b"Client Key");
            let stored = Sha512::digest(client_key);
            let signature = hmac(&stored, self.auth_message.as_bytes());
            let proof: Vec<u8> = client_key
                .iter()
                .zip(signature)
                .map(|(k, s)| k ^ s)
                .collect();
            self.salted = Some(salted);
            Ok(format!("{without_proof},p={}", B64.encode(proof)))
        }

        /// Whether server-final proves the server knows the password.
        pub fn verify(&self, server_final: &str) -> bool {
            let Some(salted) = &self.salted else {
                return false;
            };
            let server_key = hmac(salted, b"Server Key");
            let expected = hmac(&server_key, self.auth_message.as_bytes());
            server_final
                .strip_prefix("v=")
                .and_then(|v| B64.decode(v).ok())
                .is_some_and(|v| v == expected)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::ScramClient;
    use super::*;
    use std::sync::Arc;

    fn server(user: &str, password: &[u8], hash: Option<PasswordHash>) -> ScramServer {
        let hash =
            hash.unwrap_or_else(|| PasswordHash::pbkdf2(password, b"salt1234salt".to_vec(), 4096));
        let user = user.to_string();
        let lookup: Arc<Lookup> = Arc::new(move |u: &str| {
            if u != user {
                return Ok(None);
            }
            Credentials::from_hash(&hash).map(Some).ok_or(())
        });
        ScramServer::new(lookup, [7; 32])
    }

    fn run(server: &mut ScramServer, user: &str, password: &[u8]) -> (AuthStep, bool) {
        let mut client = ScramClient::new(user, password, "fyko+d2lbbFgONRv9qkxdawL");
        let AuthStep::Continue(Some(first)) = server.step(Some(client.first().as_bytes())) else {
            panic!("no server-first");
        };
        let last = client.last(std::str::from_utf8(&first).unwrap()).unwrap();
        let step = server.step(Some(last.as_bytes()));
        let verified = match &step {
            AuthStep::Success { data: Some(d), .. } => {
                client.verify(std::str::from_utf8(d).unwrap())
            }
            _ => false,
        };
        (step, verified)
    }

    #[test]
    fn right_password_is_accepted_and_the_server_proves_itself() {
        let mut s = server("alice", b"pencil", None);
        let (step, verified) = run(&mut s, "alice", b"pencil");
        assert!(matches!(step, AuthStep::Success { ref username, .. } if username == "alice"));
        assert!(verified);
    }

    #[test]
    fn wrong_password_unknown_user_and_sha512_entries_are_refused() {
        let mut s = server("alice", b"pencil", None);
        assert!(matches!(run(&mut s, "alice", b"pen").0, AuthStep::Fail(_)));
        // An unknown user gets a challenge like any other, then the refusal.
        let mut s = server("alice", b"pencil", None);
        assert!(matches!(run(&mut s, "bob", b"pencil").0, AuthStep::Fail(_)));
        let sha = PasswordHash::Sha512 {
            salt: b"x".to_vec(),
            hash: vec![0; 64],
        };
        let mut s = server("alice", b"pencil", Some(sha));
        let c = ScramClient::new("alice", b"pencil", "abc");
        assert!(matches!(
            s.step(Some(c.first().as_bytes())),
            AuthStep::Fail(ReasonCode::NOT_AUTHORIZED)
        ));
    }

    #[test]
    fn escaped_usernames_round_trip() {
        let mut s = server("a,b=c", b"pw", None);
        assert!(run(&mut s, "a,b=c", b"pw").1);
        assert_eq!(unescape("a=2Cb=3Dc").as_deref(), Some("a,b=c"));
        assert_eq!(unescape("a=2"), None);
        assert_eq!(unescape("a=41"), None);
        assert_eq!(unescape(""), None);
    }

    #[test]
    fn malformed_messages_end_the_exchange() {
        for first in [
            &b""[..],
            b"p=tls-unique,,n=alice,r=abc",
            b"n,,r=abc",
            b"n,,n=alice",
            b"n,,n=alice,r=",
            b"x,,n=alice,r=abc",
            b"n,a=bob,n=alice,r=abc",
            b"n,,n=alice,r=abc,m=ext",
            b"\xff\xfe",
        ] {
            let mut s = server("alice", b"pencil", None);
            assert!(
                matches!(s.step(Some(first)), AuthStep::Fail(_)),
                "{:?}",
                String::from_utf8_lossy(first)
            );
        }
        // A client-final with another nonce, a changed binding, or a short proof.
        let mut client = ScramClient::new("alice", b"pencil", "abc");
        let mut s = server("alice", b"pencil", None);
        let AuthStep::Continue(Some(first)) = s.step(Some(client.first().as_bytes())) else {
            panic!()
        };
        let last = client.last(std::str::from_utf8(&first).unwrap()).unwrap();
        let tampered = last.replacen("r=abc", "r=abd", 1);
        assert!(matches!(
            s.step(Some(tampered.as_bytes())),
            AuthStep::Fail(_)
        ));
        // The exchange is over after a failure.
        assert!(matches!(s.step(Some(last.as_bytes())), AuthStep::Fail(_)));
        let mut s = server("alice", b"pencil", None);
        let AuthStep::Continue(Some(first)) = s.step(Some(client.first().as_bytes())) else {
            panic!()
        };
        let mut client = ScramClient::new("alice", b"pencil", "abc");
        let last = client.last(std::str::from_utf8(&first).unwrap()).unwrap();
        let rebound = last.replacen("c=biws", "c=eSws", 1);
        assert!(matches!(
            s.step(Some(rebound.as_bytes())),
            AuthStep::Fail(_)
        ));
        let mut s = server("alice", b"pencil", None);
        let AuthStep::Continue(Some(first)) = s.step(Some(client.first().as_bytes())) else {
            panic!()
        };
        let nonce = std::str::from_utf8(&first)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .to_string();
        let short = format!("c=biws,{nonce},p=AAAA");
        assert!(matches!(s.step(Some(short.as_bytes())), AuthStep::Fail(_)));
    }
}
