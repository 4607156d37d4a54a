//! Mosquitto's password file, read and written as Mosquitto does: one `user:hash` line
//! per user, the hash being `$7$iterations$salt$hash` (PBKDF2-HMAC-SHA512) or
//! `$6$salt$hash` (SHA-512 of the password followed by the salt), salt and hash in
//! standard base64. Pure: parsing, verifying and formatting take and give text; the
//! caller reads and writes the file.
//!
//! A file with any line that does not parse is refused as a whole, every bad line
//! reported with its number: a half-read password file would silently lock users out
//! (or, with anonymous access on, let them in as nobody).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha2::{Digest, Sha512};
use std::collections::HashMap;
use std::fmt;
use subtle::ConstantTimeEq;

/// Iterations `shardmq passwd` (like `mosquitto_passwd`) uses for new `$7$` hashes.
pub const DEFAULT_ITERATIONS: u32 = 101;
/// Salt bytes for new hashes (Mosquitto 2.0 writes 12; 2.1 writes 64; both are read).
pub const SALT_LEN: usize = 12;
/// Most PBKDF2 iterations accepted from a file: a hash costing more than this per
/// CONNECT would let one file entry stall a shard.
pub const MAX_ITERATIONS: u32 = 1_000_000;

/// One user's stored hash.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$6$salt$hash`: SHA-512(password ‖ salt).
    Sha512 { salt: Vec<u8>, hash: Vec<u8> },
    /// `$7$iterations$salt$hash`: PBKDF2-HMAC-SHA512.
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        hash: Vec<u8>,
    },
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print hashes into logs.
        match self {
            PasswordHash::Sha512 { .. } => f.write_str("PasswordHash::Sha512(..)"),
            PasswordHash::Pbkdf2 { iterations, .. } => {
                write!(f, "PasswordHash::Pbkdf2({iterations} iterations, ..)")
            }
        }
    }
}

impl PasswordHash {
    /// A new `$7$` hash of `password` with a random salt, as `mosquitto_passwd` makes.
    pub fn new(password: &[u8]) -> PasswordHash {
        let mut salt = vec![0u8; SALT_LEN];
        getrandom::getrandom(&mut salt).expect("the OS random number generator");
        PasswordHash::pbkdf2(password, salt, DEFAULT_ITERATIONS)
    }

    /// A `$7$` hash of `password` with the given salt and iterations.
    pub fn pbkdf2(password: &[u8], salt: Vec<u8>, iterations: u32) -> PasswordHash {
        let mut hash = vec![0u8; 64];
        pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut hash);
        PasswordHash::Pbkdf2 {
            iterations,
            salt,
            hash,
        }
    }

    /// Parses the part after `user:`.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let b64 = |field: &str, what: &str| {
            BASE64
                .decode(field)
                .map_err(|e| format!("{what} is not valid base64: {e}"))
        };
        let fields: Vec<&str> = text.split('$').collect();
        match fields.as_slice() {
            ["", "6", salt, hash] => {
                let salt = b64(salt, "salt")?;
                let hash = b64(hash, "hash")?;
                if hash.len() != 64 {
                    return Err(format!("a $6$ hash is 64 bytes, not {}", hash.len()));
                }
                if salt.is_empty() {
                    return Err("empty salt".into());
                }
                Ok(PasswordHash::Sha512 { salt, hash })
            }
            ["", "7", iterations, salt, hash] => {
                let iterations: u32 = iterations
                    .parse()
                    .map_err(|_| format!("iteration count {iterations:?} is not a number"))?;
                if iterations == 0 || iterations > MAX_ITERATIONS {
                    return Err(format!(
                        "iteration count {iterations} is outside 1..={MAX_ITERATIONS}"
                    ));
                }
                let salt = b64(salt, "salt")?;
                let hash = b64(hash, "hash")?;
                if hash.len() != 64 {
                    return Err(format!("a $7$ hash is 64 bytes, not {}", hash.len()));
                }
                if salt.is_empty() {
                    return Err("empty salt".into());
                }
                Ok(PasswordHash::Pbkdf2 {
                    iterations,
                    salt,
                    hash,
                })
            }
            _ if text.starts_with('$') => Err("unknown hash type (only $6$ and $7$)".into()),
            _ => Err("not a hash (plain-text passwords are not accepted)".into()),
        }
    }

    /// Whether `password` matches, compared in constant time.
    pub fn verify(&self, password: &[u8]) -> bool {
        let computed = match self {
            PasswordHash::Sha512 { salt, .. } => {
                let mut h = Sha512::new();
                h.update(password);
                h.update(salt);
                h.finalize().to_vec()
            }
            PasswordHash::Pbkdf2 {
                iterations, salt, ..
            } => {
                let mut out = vec![0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, *iterations, &mut out);
                out
            }
        };
        let stored = match self {
            PasswordHash::Sha512 { hash, .. } | PasswordHash::Pbkdf2 { hash, .. } => hash,
        };
        computed.ct_eq(stored).into()
    }

    /// Whether verifying costs enough that it belongs off the shard's thread: any
    /// PBKDF2 hash (about 0.1 ms at Mosquitto's default of 101 iterations, and
    /// operators raise the count), but not a `$6$` hash, which is one SHA-512.
    pub fn is_expensive(&self) -> bool {
        matches!(self, PasswordHash::Pbkdf2 { .. })
    }
}

impl fmt::Display for PasswordHash {
    /// The text after `user:`, exactly as Mosquitto writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordHash::Sha512 { salt, hash } => {
                write!(f, "$6${}${}", BASE64.encode(salt), BASE64.encode(hash))
            }
            PasswordHash::Pbkdf2 {
                iterations,
                salt,
                hash,
            } => write!(
                f,
                "$7${iterations}${}${}",
                BASE64.encode(salt),
                BASE64.encode(hash)
            ),
        }
    }
}

/// A line of a password file that did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based.
    pub line: usize,
    pub why: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.why)
    }
}

/// Every bad line of a refused file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseErrors(pub Vec<LineError>);

impl fmt::Display for ParseErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseErrors {}

/// A password file's users, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PasswordFile {
    users: Vec<(String, PasswordHash)>,
    index: HashMap<String, usize>,
}

impl PasswordFile {
    /// Parses a whole file. Blank lines and lines starting with `#` are skipped, and
    /// surrounding whitespace is ignored, as Mosquitto does.
    pub fn parse(text: &str) -> Result<PasswordFile, ParseErrors> {
        let mut file = PasswordFile::default();
        let mut errors = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fail = |why: String| errors.push(LineError { line: i + 1, why });
            let Some((user, hash)) = line.split_once(':') else {
                fail("expected user:hash".into());
                continue;
            };
            if user.is_empty() {
                fail("empty user name".into());
                continue;
            }
            if file.index.contains_key(user) {
                fail(format!("user {user:?} appears twice"));
                continue;
            }
            match PasswordHash::parse(hash) {
                Ok(h) => file.set(user, h),
                Err(why) => fail(format!("user {user:?}: {why}")),
            }
        }
        if errors.is_empty() {
            Ok(file)
        } else {
            Err(ParseErrors(errors))
        }
    }

    /// The hash stored for `user`.
    pub fn get(&self, user: &str) -> Option<&PasswordHash> {
        self.index.get(user).map(|&i| &self.users[i].1)
    }

    /// Adds `user` or replaces its hash (keeping its place in the file).
    pub fn set(&mut self, user: &str, hash: PasswordHash) {
        match self.index.get(user) {
            Some(&i) => self.users[i].1 = hash,
            None => {
                self.index.insert(user.to_string(), self.users.len());
                self.users.push((user.to_string(), hash));
            }
        }
    }

    /// Removes `user`; false if it was not there.
    pub fn remove(&mut self, user: &str) -> bool {
        let Some(i) = self.index.remove(user) else {
            return false;
        };
        self.users.remove(i);
        for (_, j) in self.index.iter_mut() {
            if *j > i {
                *j -= 1;
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` exists and `password` is theirs.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        self.get(user).is_some_and(|h| h.verify(password))
    }
}

impl fmt::Display for PasswordFile {
    /// The file's text, one `user:hash` line per user.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (user, hash) in &self.users {
            writeln!(f, "{user}:{hash}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written by Debian's `mosquitto_passwd -b` (Mosquitto 2.0.11) for user "alice",
    /// password "secret": PBKDF2 with 101 iterations and a 12-byte salt.
    const MOSQUITTO_7: &str = "$7$101$NprJc5G4YcVOHWGH$vGr6dAdgs6dE3kua0Crmgzashg108HroVWALo+HFy601flHCdmStb30tPdtkm5lkk/2u0rTHw1efLPQOB18HLg==";

    #[test]
    fn sha512_hashes_are_password_then_salt() {
        let salt = b"0123456789ab".to_vec();
        let mut h = Sha512::new();
        h.update(b"pw");
        h.update(&salt);
        let hash = h.finalize().to_vec();
        let line = format!("$6${}${}", BASE64.encode(&salt), BASE64.encode(&hash));
        let parsed = PasswordHash::parse(&line).unwrap();
        assert!(parsed.verify(b"pw"));
        assert!(!parsed.verify(b"pw "));
        assert!(!parsed.verify(b""));
        assert_eq!(parsed.to_string(), line);
    }

    #[test]
    fn pbkdf2_hashes_round_trip_with_12_and_64_byte_salts() {
        for salt_len in [12, 64] {
            let h = PasswordHash::pbkdf2(b"s3cret", vec![7u8; salt_len], 101);
            let text = h.to_string();
            assert!(text.starts_with("$7$101$"), "{text}");
            let back = PasswordHash::parse(&text).unwrap();
            assert_eq!(back, h);
            assert!(back.verify(b"s3cret"));
            assert!(!back.verify(b"s3creT"));
        }
        let fresh = PasswordHash::new(b"x");
        assert!(fresh.verify(b"x"));
        assert_ne!(fresh, PasswordHash::new(b"x"), "salts are random");
    }

    #[test]
    fn a_hash_written_by_mosquitto_passwd_verifies() {
        let h = PasswordHash::parse(MOSQUITTO_7).unwrap();
        assert!(matches!(
            h,
            PasswordHash::Pbkdf2 { iterations: 101, ref salt, .. } if salt.len() == 12
        ));
        assert!(h.verify(b"secret"));
        assert!(!h.verify(b"Secret"));
        assert_eq!(h.to_string(), MOSQUITTO_7);
    }

    #[test]
    fn files_are_parsed_with_comments_blank_lines_and_whitespace() {
        let a = PasswordHash::pbkdf2(b"a", b"saltsaltsalt".to_vec(), 101);
        let b = PasswordHash::pbkdf2(b"b", b"SALTSALTSALT".to_vec(), 5);
        let text = format!("# users\n\nalice:{a}\n  bob:{b}  \r\n");
        let f = PasswordFile::parse(&text).unwrap();
        assert_eq!(f.len(), 2);
        assert!(f.verify("alice", b"a"));
        assert!(f.verify("bob", b"b"));
        assert!(!f.verify("alice", b"b"));
        assert!(!f.verify("carol", b"a"));
        assert_eq!(f.to_string(), format!("alice:{a}\nbob:{b}\n"));
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number_and_the_file_refused() {
        let good = PasswordHash::pbkdf2(b"a", b"saltsaltsalt".to_vec(), 101).to_string();
        let text = [
            format!("alice:{good}"),
            "bob:plaintext".to_string(),
            "no colon here".to_string(),
            format!(":{good}"),
            "carol:$7$abc$c2FsdA==$aGFzaA==".to_string(),
            "dave:$7$101$!!!$aGFzaA==".to_string(),
            "erin:$7$101$c2FsdA==$aGFzaA==".to_string(),
            "frank:$5$abc$def".to_string(),
            format!("alice:{good}"),
            "gina:$7$0$c2FsdA==$aGFzaA==".to_string(),
        ]
        .join("\n");
        let errors = PasswordFile::parse(&text).unwrap_err().0;
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6, 7, 8, 9, 10], "{errors:?}");
        assert!(errors[0].why.contains("plain-text"), "{errors:?}");
        assert!(errors[7].why.contains("twice"), "{errors:?}");
    }

    #[test]
    fn users_are_set_replaced_and_removed_in_place() {
        let mut f = PasswordFile::default();
        f.set("a", PasswordHash::pbkdf2(b"1", vec![1; 12], 2));
        f.set("b", PasswordHash::pbkdf2(b"2", vec![2; 12], 2));
        f.set("c", PasswordHash::pbkdf2(b"3", vec![3; 12], 2));
        f.set("a", PasswordHash::pbkdf2(b"new", vec![4; 12], 2));
        assert!(f.remove("b"));
        assert!(!f.remove("b"));
        let text = f.to_string();
        assert!(text.starts_with("a:") && text.contains("\nc:"), "{text}");
        let back = PasswordFile::parse(&text).unwrap();
        assert!(back.verify("a", b"new") && back.verify("c", b"3"));
        assert!(back.get("b").is_none());
    }

    #[test]
    fn debug_output_never_shows_a_hash() {
        let h = PasswordHash::pbkdf2(b"a", b"saltsaltsalt".to_vec(), 101);
        let text = h.to_string();
        let hash_b64 = text.rsplit('$').next().unwrap();
        assert!(!format!("{h:?}").contains(hash_b64));
    }
}
