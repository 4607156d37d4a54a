//! Authentication and authorisation: the [`Authenticator`] seam (CONNECT, then one
//! [`Rights`] value per client for its publishes, subscriptions and deliveries), and
//! its built-in implementation over Mosquitto's password and ACL files
//! ([`FileAuth`]). Decisions are pure; the files are read by [`FileAuth::load`] on
//! the main thread, and a reload swaps a whole new value into every shard.

pub mod acl;
pub mod password;
pub mod scram;

use crate::protocol::{Connect, ConnectReturnCode, ReasonCode};
use acl::{AclFile, ClientAcl, FilterAccess};
use bytes::Bytes;
use bytestring::ByteString;
use password::{ParseErrors, PasswordFile, PasswordHash};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use subtle::ConstantTimeEq;

/// Decides who may connect, and what each client may then do. Called on the shard
/// that handles the client, so it must be cheap, except [`Authenticator::connect`]
/// when [`Authenticator::connect_is_slow`] says so: the broker then calls it on a
/// blocking thread, off the shard.
pub trait Authenticator: Send + Sync + 'static {
    /// The CONNACK code for this CONNECT: `Accepted`, or the refusal to send.
    fn connect(&self, _connect: &Connect, _peer: SocketAddr) -> ConnectReturnCode {
        ConnectReturnCode::Accepted
    }

    /// Whether [`Authenticator::connect`] may take long for this CONNECT (an
    /// expensive password hash not verified recently).
    fn connect_is_slow(&self, _connect: &Connect) -> bool {
        false
    }

    /// What an accepted client may do, decided once when it connects (and again for
    /// every session after a reload). `None`: everything, at no cost per message.
    fn rights(&self, _client_id: &str, _username: Option<&str>) -> Option<Arc<dyn Rights>> {
        None
    }

    /// MQTT 5.0 enhanced authentication: an exchange for the Authentication Method a
    /// client named (in CONNECT, or in AUTH 0x19 to re-authenticate), or `None` when
    /// this authenticator does not offer it (the CONNECT then gets CONNACK 0x8C).
    /// [`Authenticator::connect`] is not called for a CONNECT that names a method:
    /// the exchange decides, and names the user.
    fn start_auth(&self, _method: &str, _peer: SocketAddr) -> Option<Box<dyn AuthExchange>> {
        None
    }
}

/// One enhanced-authentication exchange, on the broker's side (MQTT 5.0 §4.12). It is
/// driven on the client's shard, so each step must be cheap.
pub trait AuthExchange: Send {
    /// The client's next Authentication Data (from CONNECT or AUTH; `None` when the
    /// packet had none): what the broker answers.
    fn step(&mut self, data: Option<&[u8]>) -> AuthStep;
}

/// What the broker answers one step of an exchange with.
#[derive(Debug)]
pub enum AuthStep {
    /// AUTH 0x18 (continue authentication) with this data; the client answers with
    /// AUTH 0x18.
    Continue(Option<Bytes>),
    /// Authenticated as `username`: CONNACK 0x00 (or AUTH 0x00 after a
    /// re-authentication) with this data.
    Success {
        username: ByteString,
        data: Option<Bytes>,
    },
    /// Refused: CONNACK (or, after a re-authentication, DISCONNECT) with this reason.
    Fail(ReasonCode),
}

/// One client's rights.
pub trait Rights: Send + Sync + 'static {
    /// Whether it may publish to `topic`. A refused QoS 1/2 publish is still
    /// acknowledged (MQTT 3.1.1 has no negative acknowledgement) but not routed.
    fn can_write(&self, topic: &str) -> bool;

    /// Whether it may receive a message published on `topic`.
    fn can_read(&self, topic: &str) -> bool;

    /// How deliveries through a subscription to `filter` are checked; `Denied`
    /// answers the SUBSCRIBE with 0x80. The default checks every delivery.
    fn filter_access(&self, _filter: &str) -> FilterAccess {
        FilterAccess::PerMessage
    }
}

impl Rights for ClientAcl {
    fn can_write(&self, topic: &str) -> bool {
        ClientAcl::can_write(self, topic)
    }

    fn can_read(&self, topic: &str) -> bool {
        ClientAcl::can_read(self, topic)
    }

    fn filter_access(&self, filter: &str) -> FilterAccess {
        ClientAcl::filter_access(self, filter)
    }
}

/// Allows every client everything: the broker's default without password or ACL
/// files.
#[derive(Debug, Default, Clone, Copy)]
pub struct AllowAll;

impl Authenticator for AllowAll {}

/// Why the security files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {errors}")]
    Parse { path: PathBuf, errors: ParseErrors },
}

/// The built-in [`Authenticator`]: Mosquitto's password file and ACL file, and
/// whether clients without a username are let in.
///
/// Password checks are cached per user (a keyed SHA-256 of the last password that
/// verified), so a reconnect storm of a whole fleet costs one full hash per distinct
/// credential, not one per connection; PBKDF2 hashes are verified off the shard (see
/// [`Authenticator::connect_is_slow`]).
pub struct FileAuth {
    passwords: Option<Arc<PasswordFile>>,
    acl: Option<AclFile>,
    allow_anonymous: bool,
    /// user → keyed digest of the password that last verified. At most one entry per
    /// user of the file. Touched on CONNECT only, never on the message path.
    cache: Mutex<HashMap<String, [u8; 32]>>,
    cache_key: [u8; 32],
    /// SCRAM credentials by user, derived once from the password file.
    scram: Option<Arc<scram::Lookup>>,
}

impl std::fmt::Debug for FileAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileAuth")
            .field("users", &self.passwords.as_ref().map(|p| p.len()))
            .field("acl", &self.acl.is_some())
            .field("allow_anonymous", &self.allow_anonymous)
            .finish()
    }
}

impl FileAuth {
    /// From parsed files. `allow_anonymous: None` means: true when there is no
    /// password file, false when there is one (as Mosquitto 2 has it).
    pub fn new(
        passwords: Option<PasswordFile>,
        acl: Option<AclFile>,
        allow_anonymous: Option<bool>,
    ) -> FileAuth {
        let allow_anonymous = allow_anonymous.unwrap_or(passwords.is_none());
        let mut cache_key = [0u8; 32];
        getrandom::getrandom(&mut cache_key).expect("the OS random number generator");
        let passwords = passwords.map(Arc::new);
        let scram = passwords.clone().map(|p| {
            let lookup: Arc<scram::Lookup> = Arc::new(move |user: &str| match p.get(user) {
                Some(hash) => scram::Credentials::from_hash(hash).map(Some).ok_or(()),
                None => Ok(None),
            });
            lookup
        });
        FileAuth {
            passwords,
            acl,
            allow_anonymous,
            cache: Mutex::new(HashMap::new()),
            cache_key,
            scram,
        }
    }

    /// Reads and parses the files; any unreadable file or bad line refuses the load.
    pub fn load(
        password_file: Option<&Path>,
        acl_file: Option<&Path>,
        allow_anonymous: Option<bool>,
    ) -> Result<FileAuth, AuthError> {
        fn read(path: &Path) -> Result<String, AuthError> {
            std::fs::read_to_string(path).map_err(|source| AuthError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
        let passwords = match password_file {
            Some(p) => Some(
                PasswordFile::parse(&read(p)?).map_err(|errors| AuthError::Parse {
                    path: p.to_path_buf(),
                    errors,
                })?,
            ),
            None => None,
        };
        let acl = match acl_file {
            Some(p) => Some(
                AclFile::parse(&read(p)?).map_err(|errors| AuthError::Parse {
                    path: p.to_path_buf(),
                    errors,
                })?,
            ),
            None => None,
        };
        Ok(FileAuth::new(passwords, acl, allow_anonymous))
    }

    /// Whether clients without a username are accepted.
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    fn digest(&self, password: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.cache_key);
        h.update(password);
        h.finalize().into()
    }

    fn cached(&self, user: &str, password: &[u8]) -> bool {
        let digest = self.digest(password);
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(user)
            .is_some_and(|d| bool::from(d.ct_eq(&digest)))
    }

    /// The stored hash for this CONNECT's user, when a password check applies.
    fn hash_for(&self, connect: &Connect) -> Option<&PasswordHash> {
        let user = connect.username.as_deref()?;
        self.passwords.as_ref()?.get(user)
    }
}

impl Authenticator for FileAuth {
    fn connect(&self, connect: &Connect, _peer: SocketAddr) -> ConnectReturnCode {
        let Some(user) = connect.username.as_deref() else {
            return if self.allow_anonymous {
                ConnectReturnCode::Accepted
            } else {
                ConnectReturnCode::NotAuthorized
            };
        };
        let Some(passwords) = &self.passwords else {
            // No password file: a username only names the client for the ACL.
            return if self.allow_anonymous {
                ConnectReturnCode::Accepted
            } else {
                ConnectReturnCode::NotAuthorized
            };
        };
        let (Some(hash), Some(password)) = (passwords.get(user), connect.password.as_deref())
        else {
            return ConnectReturnCode::BadUsernameOrPassword;
        };
        if self.cached(user, password) {
            return ConnectReturnCode::Accepted;
        }
        if !hash.verify(password) {
            return ConnectReturnCode::BadUsernameOrPassword;
        }
        let digest = self.digest(password);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.to_string(), digest);
        ConnectReturnCode::Accepted
    }

    fn connect_is_slow(&self, connect: &Connect) -> bool {
        match (self.hash_for(connect), connect.password.as_deref()) {
            (Some(hash), Some(password)) => {
                hash.is_expensive()
                    && !self.cached(connect.username.as_deref().unwrap_or(""), password)
            }
            _ => false,
        }
    }

    fn rights(&self, client_id: &str, username: Option<&str>) -> Option<Arc<dyn Rights>> {
        let acl = self.acl.as_ref()?;
        Some(Arc::new(acl.for_client(client_id, username)))
    }

    /// SCRAM-SHA-512 over the password file's `$7$` entries, when there is a file.
    fn start_auth(&self, method: &str, _peer: SocketAddr) -> Option<Box<dyn AuthExchange>> {
        if method != scram::METHOD {
            return None;
        }
        let lookup = self.scram.clone()?;
        Some(Box::new(scram::ScramServer::new(lookup, self.cache_key)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Protocol;
    use bytestring::ByteString;

    fn connect(user: Option<&str>, password: Option<&[u8]>) -> Connect {
        Connect {
            props: Default::default(),
            protocol: Protocol::V311,
            bridge: false,
            clean_session: true,
            keep_alive: 60,
            client_id: ByteString::from_static("c"),
            will: None,
            username: user.map(ByteString::from),
            password: password.map(bytes::Bytes::copy_from_slice),
        }
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    fn users() -> PasswordFile {
        let mut f = PasswordFile::default();
        f.set("alice", PasswordHash::pbkdf2(b"wonder", vec![1; 12], 101));
        f.set("slow", PasswordHash::pbkdf2(b"turtle", vec![2; 12], 20_000));
        let sha = PasswordFile::parse(&format!(
            "quick:{}",
            "$6$c2FsdHNhbHRzYWx0$".to_string() + &sha512_b64(b"hare", b"saltsaltsalt")
        ))
        .unwrap();
        f.set("quick", sha.get("quick").unwrap().clone());
        f
    }

    fn sha512_b64(password: &[u8], salt: &[u8]) -> String {
        use base64::Engine;
        use sha2::Sha512;
        let mut h = Sha512::new();
        h.update(password);
        h.update(salt);
        base64::engine::general_purpose::STANDARD.encode(h.finalize())
    }

    #[test]
    fn credentials_are_checked_against_the_password_file() {
        use ConnectReturnCode::*;
        let auth = FileAuth::new(Some(users()), None, None);
        assert!(
            !auth.allows_anonymous(),
            "a password file turns anonymous off"
        );
        let code = |u, p| auth.connect(&connect(u, p), peer());
        assert_eq!(code(Some("alice"), Some(&b"wonder"[..])), Accepted);
        assert_eq!(
            code(Some("alice"), Some(&b"wonder"[..])),
            Accepted,
            "cached"
        );
        assert_eq!(
            code(Some("alice"), Some(&b"Wonder"[..])),
            BadUsernameOrPassword
        );
        assert_eq!(code(Some("alice"), None), BadUsernameOrPassword);
        assert_eq!(
            code(Some("bob"), Some(&b"wonder"[..])),
            BadUsernameOrPassword
        );
        assert_eq!(code(None, None), NotAuthorized);
        let open = FileAuth::new(Some(users()), None, Some(true));
        assert_eq!(open.connect(&connect(None, None), peer()), Accepted);
        assert_eq!(
            open.connect(&connect(Some("alice"), Some(b"x")), peer()),
            BadUsernameOrPassword,
            "anonymous access does not excuse a wrong password"
        );
    }

    #[test]
    fn without_a_password_file_anonymous_access_decides() {
        use ConnectReturnCode::*;
        let open = FileAuth::new(None, None, None);
        assert!(open.allows_anonymous());
        assert_eq!(open.connect(&connect(Some("x"), None), peer()), Accepted);
        let closed = FileAuth::new(None, None, Some(false));
        assert_eq!(closed.connect(&connect(None, None), peer()), NotAuthorized);
        assert_eq!(
            closed.connect(&connect(Some("x"), Some(b"y")), peer()),
            NotAuthorized
        );
    }

    #[test]
    fn expensive_hashes_are_slow_until_verified_once() {
        let auth = FileAuth::new(Some(users()), None, None);
        let slow = connect(Some("slow"), Some(b"turtle"));
        assert!(auth.connect_is_slow(&slow));
        assert!(auth.connect_is_slow(&connect(Some("alice"), Some(b"wonder"))));
        let quick = connect(Some("quick"), Some(b"hare"));
        assert!(!auth.connect_is_slow(&quick), "a $6$ hash is one SHA-512");
        assert_eq!(auth.connect(&quick, peer()), ConnectReturnCode::Accepted);
        assert!(!auth.connect_is_slow(&connect(Some("nobody"), Some(b"x"))));
        assert_eq!(auth.connect(&slow, peer()), ConnectReturnCode::Accepted);
        assert!(!auth.connect_is_slow(&slow), "verified once, then cached");
        assert!(auth.connect_is_slow(&connect(Some("slow"), Some(b"hare"))));
    }

    #[test]
    fn rights_come_from_the_acl_when_there_is_one() {
        let acl = AclFile::parse("user alice\ntopic readwrite alice/#\n").unwrap();
        let auth = FileAuth::new(None, Some(acl), None);
        let r = auth.rights("c", Some("alice")).unwrap();
        assert!(r.can_write("alice/x") && r.can_read("alice/x"));
        assert!(!r.can_read("bob/x"));
        assert_eq!(r.filter_access("alice/#"), FilterAccess::Allowed);
        assert!(FileAuth::new(None, None, None).rights("c", None).is_none());
    }

    #[test]
    fn loading_reports_the_file_and_every_bad_line() {
        let dir = std::env::temp_dir().join(format!("shardmq-auth-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pw = dir.join("passwd");
        let acl = dir.join("acl");
        std::fs::write(&pw, "alice:plain\nbob:$6$x$y\n").unwrap();
        std::fs::write(&acl, "topic read a/#\n").unwrap();
        let e = FileAuth::load(Some(&pw), Some(&acl), None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("passwd") && e.contains("line 1") && e.contains("line 2"),
            "{e}"
        );
        std::fs::write(&pw, format!("alice:{}\n", PasswordHash::new(b"a"))).unwrap();
        std::fs::write(&acl, "topic read a/#\nbogus\n").unwrap();
        let e = FileAuth::load(Some(&pw), Some(&acl), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("acl") && e.contains("line 2"), "{e}");
        let missing = dir.join("missing");
        assert!(matches!(
            FileAuth::load(Some(&missing), None, None),
            Err(AuthError::Read { .. })
        ));
        std::fs::write(&acl, "topic read a/#\n").unwrap();
        let auth = FileAuth::load(Some(&pw), Some(&acl), None).unwrap();
        assert_eq!(
            auth.connect(&connect(Some("alice"), Some(b"a")), peer()),
            ConnectReturnCode::Accepted
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
