//! What a session's client may do, as the shard keeps it: the [`Rights`] its
//! authenticator gave it at CONNECT (or after a reload), and whether its deliveries
//! need a check per message (DESIGN §10: decided once per subscription where the
//! filter's answer cannot change per topic).

use crate::auth::acl::FilterAccess;
use crate::auth::{Authenticator, Rights};
use bytestring::ByteString;
use std::sync::Arc;

/// Kept only for clients that gave a username or have rights to check, so an
/// anonymous client of a broker without ACLs costs one null pointer.
pub(super) struct ClientAuth {
    /// Kept to compute the rights again when the files are reloaded.
    pub username: Option<ByteString>,
    pub rights: Option<Arc<dyn Rights>>,
    /// Some subscription of the session is neither wholly readable nor refused:
    /// every delivery is checked against `rights`.
    pub read_checks: bool,
}

impl ClientAuth {
    /// The rights `auth` gives this client; `None` when nothing needs keeping.
    pub fn new(
        auth: &dyn Authenticator,
        client_id: &str,
        username: Option<ByteString>,
    ) -> Option<Box<ClientAuth>> {
        let rights = auth.rights(client_id, username.as_deref());
        (username.is_some() || rights.is_some()).then(|| {
            Box::new(ClientAuth {
                username,
                rights,
                read_checks: false,
            })
        })
    }

    /// Records what a granted subscription to `filter` needs; false if it must be
    /// refused (no topic it matches may be read).
    pub fn admit_filter(&mut self, filter: &str) -> bool {
        let Some(rights) = &self.rights else {
            return true;
        };
        match rights.filter_access(filter) {
            FilterAccess::Allowed => true,
            FilterAccess::Denied => false,
            FilterAccess::PerMessage => {
                self.read_checks = true;
                true
            }
        }
    }
}

impl ClientAuth {
    /// Takes on a session's existing subscriptions (a resumed session, or new
    /// rights after a reload). One now wholly denied stays, and delivers nothing.
    pub fn admit_existing<'a>(&mut self, filters: impl Iterator<Item = &'a ByteString>) {
        for f in filters {
            // A shared subscription reads what its filter part matches.
            let f = match crate::topic::share::parse(f) {
                crate::topic::share::FilterKind::Shared(s) => s.filter,
                _ => &**f,
            };
            if !self.admit_filter(f) {
                self.read_checks = true;
            }
        }
    }
}

/// Whether the session with `auth` may receive a message on `topic`.
#[inline]
pub(super) fn may_read(auth: &Option<Box<ClientAuth>>, topic: &str) -> bool {
    match auth {
        Some(a) if a.read_checks => a.rights.as_ref().is_none_or(|r| r.can_read(topic)),
        _ => true,
    }
}

/// Whether the session with `auth` may publish on `topic`.
#[inline]
pub(super) fn may_write(auth: &Option<Box<ClientAuth>>, topic: &str) -> bool {
    match auth {
        Some(a) => a.rights.as_ref().is_none_or(|r| r.can_write(topic)),
        None => true,
    }
}
