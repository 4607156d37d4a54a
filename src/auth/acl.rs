//! Mosquitto's ACL file, with Mosquitto's meaning:
//!
//! ```text
//! # comment
//! topic [read|write|readwrite|deny] TOPIC     # before any `user`: anonymous clients
//! user NAME
//! topic [read|write|readwrite|deny] TOPIC     # this user's rules
//! pattern [read|write|readwrite|deny] TOPIC   # every client; %c = client id, %u = username
//! ```
//!
//! The access word is optional (`readwrite`). TOPIC and NAME run to the end of the
//! line. A client's own rules (its user's, or the anonymous ones when it gave no
//! username) are tried first: a matching `deny` refuses, else a matching grant allows.
//! When none of them matches, the patterns decide the same way; a client whose id or
//! username contains `+` or `#` never matches a pattern, and a `%u` pattern never
//! matches a client without a username. Nothing matching means no access. Topics
//! starting with `$` only match rules whose first level is not a wildcard (§4.7.2).
//!
//! Pure: the file is text in, decisions out. [`ClientAcl`] is one client's compiled
//! view, built at CONNECT so nothing is substituted per message.

use super::password::{LineError, ParseErrors};
use crate::protocol::topic::matches;
use std::collections::HashMap;

/// What a rule grants (or, for `Deny`, refuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn grants_read(self) -> bool {
        matches!(self, Access::Read | Access::ReadWrite)
    }

    fn grants_write(self) -> bool {
        matches!(self, Access::Write | Access::ReadWrite)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    topic: String,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclFile {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

impl AclFile {
    /// Parses a whole file; any bad line refuses it, every bad line reported.
    pub fn parse(text: &str) -> Result<AclFile, ParseErrors> {
        let mut acl = AclFile::default();
        let mut errors = Vec::new();
        let mut user: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = split_word(line);
            let fail = |why: String| LineError { line: i + 1, why };
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        errors.push(fail("`user` without a name".into()));
                        continue;
                    }
                    acl.users.entry(rest.to_string()).or_default();
                    user = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let (first, after) = split_word(rest);
                    let (access, topic) = match first {
                        "read" => (Access::Read, after),
                        "write" => (Access::Write, after),
                        "readwrite" => (Access::ReadWrite, after),
                        "deny" => (Access::Deny, after),
                        _ => (Access::ReadWrite, rest),
                    };
                    if let Err(why) = check_rule_topic(topic) {
                        errors.push(fail(why));
                        continue;
                    }
                    let rule = Rule {
                        access,
                        topic: topic.to_string(),
                    };
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else {
                        match &user {
                            Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                            None => acl.anonymous.push(rule),
                        }
                    }
                }
                other => errors.push(fail(format!(
                    "unknown keyword {other:?} (expected topic, user or pattern)"
                ))),
            }
        }
        if errors.is_empty() {
            Ok(acl)
        } else {
            Err(ParseErrors(errors))
        }
    }

    /// The rules that apply to one client, with `%c` and `%u` substituted.
    pub fn for_client(&self, client_id: &str, username: Option<&str>) -> ClientAcl {
        let own = match username {
            Some(u) => self.users.get(u).cloned().unwrap_or_default(),
            None => self.anonymous.clone(),
        };
        let wild = |s: &str| s.contains(['+', '#']);
        let patterns = if wild(client_id) || username.is_some_and(wild) {
            None
        } else {
            Some(
                self.patterns
                    .iter()
                    .filter(|r| username.is_some() || !r.topic.contains("%u"))
                    .map(|r| Rule {
                        access: r.access,
                        topic: substitute(&r.topic, client_id, username.unwrap_or("")),
                    })
                    .collect(),
            )
        };
        ClientAcl { own, patterns }
    }
}

/// `%c` → client id, `%u` → username, in one pass over the pattern: what is put in
/// is never read again (a client id holding `%u` must not become the username).
fn substitute(pattern: &str, client_id: &str, username: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + client_id.len());
    let mut rest = pattern;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('c') {
            out.push_str(client_id);
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('u') {
            out.push_str(username);
            rest = tail;
        } else {
            out.push('%');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The first whitespace-separated word of `s`, and the rest, trimmed.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(char::is_whitespace) {
        Some((w, rest)) => (w, rest.trim()),
        None => (s, ""),
    }
}

/// A rule's topic must be a valid topic filter once `%c`/`%u` are substituted.
fn check_rule_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("rule without a topic".into());
    }
    let probe = topic.replace("%c", "c").replace("%u", "u");
    if !crate::protocol::topic::valid_topic_filter(&probe) {
        return Err(format!("{topic:?} is not a valid topic filter"));
    }
    Ok(())
}

/// How a subscription's deliveries are to be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterAccess {
    /// Every topic the filter matches may be read: no per-message check.
    Allowed,
    /// No topic the filter matches may be read: SUBACK 0x80.
    Denied,
    /// Some may, some may not: each delivery is checked.
    PerMessage,
}

/// One client's rules, compiled at CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAcl {
    own: Vec<Rule>,
    /// `None`: the client id or username holds a wildcard, so no pattern applies.
    patterns: Option<Vec<Rule>>,
}

/// What one list of rules says about a topic.
enum Says {
    Deny,
    Allow,
    Nothing,
}

fn decide(rules: &[Rule], topic: &str, grants: fn(Access) -> bool) -> Says {
    if rules
        .iter()
        .any(|r| r.access == Access::Deny && matches(&r.topic, topic))
    {
        return Says::Deny;
    }
    if rules
        .iter()
        .any(|r| grants(r.access) && matches(&r.topic, topic))
    {
        return Says::Allow;
    }
    Says::Nothing
}

impl ClientAcl {
    fn allows(&self, topic: &str, grants: fn(Access) -> bool) -> bool {
        match decide(&self.own, topic, grants) {
            Says::Deny => false,
            Says::Allow => true,
            Says::Nothing => match &self.patterns {
                Some(p) => matches!(decide(p, topic, grants), Says::Allow),
                None => false,
            },
        }
    }

    /// Whether this client may publish to `topic`.
    pub fn can_write(&self, topic: &str) -> bool {
        self.allows(topic, Access::grants_write)
    }

    /// Whether this client may receive a message on `topic`.
    pub fn can_read(&self, topic: &str) -> bool {
        self.allows(topic, Access::grants_read)
    }

    /// How deliveries through a subscription to `filter` must be checked.
    pub fn filter_access(&self, filter: &str) -> FilterAccess {
        let list = |rules: &[Rule]| {
            let deny_covers = rules
                .iter()
                .any(|r| r.access == Access::Deny && covers(&r.topic, filter));
            let deny_touches = rules
                .iter()
                .any(|r| r.access == Access::Deny && intersects(&r.topic, filter));
            let grant_covers = rules
                .iter()
                .any(|r| r.access.grants_read() && covers(&r.topic, filter));
            let touches = rules.iter().any(|r| intersects(&r.topic, filter));
            let grant_touches = rules
                .iter()
                .any(|r| r.access.grants_read() && intersects(&r.topic, filter));
            (
                deny_covers,
                deny_touches,
                grant_covers,
                touches,
                grant_touches,
            )
        };
        let (deny_covers, deny_touches, grant_covers, own_touches, own_grants) = list(&self.own);
        if deny_covers {
            return FilterAccess::Denied;
        }
        if grant_covers && !deny_touches {
            return FilterAccess::Allowed;
        }
        let patterns = self.patterns.as_deref().unwrap_or(&[]);
        let (p_deny_covers, p_deny_touches, p_grant_covers, _, p_grants) = list(patterns);
        if !own_touches {
            // Only the patterns speak for this filter.
            if p_deny_covers || !p_grants {
                return FilterAccess::Denied;
            }
            if p_grant_covers && !p_deny_touches {
                return FilterAccess::Allowed;
            }
            return FilterAccess::PerMessage;
        }
        if !own_grants && !p_grants {
            return FilterAccess::Denied;
        }
        FilterAccess::PerMessage
    }
}

/// The levels of a filter, and whether its first level is a wildcard (which keeps it
/// away from `$` topics).
fn levels(f: &str) -> Vec<&str> {
    f.split('/').collect()
}

fn first_is_wild(levels: &[&str]) -> bool {
    matches!(levels.first(), Some(&"+") | Some(&"#"))
}

fn first_is_dollar(levels: &[&str]) -> bool {
    levels.first().is_some_and(|l| l.starts_with('$'))
}

/// Whether every topic `inner` matches is matched by `outer`.
pub fn covers(outer: &str, inner: &str) -> bool {
    let (o, i) = (levels(outer), levels(inner));
    if first_is_wild(&o) && (first_is_dollar(&i) || i.first() == Some(&"$")) {
        return false;
    }
    for (k, ol) in o.iter().enumerate() {
        if *ol == "#" {
            return true;
        }
        let Some(il) = i.get(k) else {
            // `inner` ended; it also matches nothing deeper.
            return false;
        };
        match (*ol, *il) {
            (_, "#") => return false,
            ("+", _) => {}
            (a, b) if a == b => {}
            _ => return false,
        }
    }
    // `outer` ended: `inner` must end too ("a/#" matching "a" is not covered by "a").
    i.len() == o.len()
}

/// Whether some topic is matched by both `a` and `b`.
pub fn intersects(a: &str, b: &str) -> bool {
    let (x, y) = (levels(a), levels(b));
    // A first-level wildcard never matches a `$` topic; a literal first level starting
    // with `$` matches only `$` topics.
    if (first_is_wild(&x) && first_is_dollar(&y)) || (first_is_wild(&y) && first_is_dollar(&x)) {
        return false;
    }
    let mut k = 0;
    loop {
        match (x.get(k), y.get(k)) {
            (Some(&"#"), _) | (_, Some(&"#")) => return true,
            (None, None) => return true,
            // One ended where the other goes on (not with `#`, handled above).
            (Some(_), None) | (None, Some(_)) => return false,
            (Some(&"+"), Some(_)) | (Some(_), Some(&"+")) => {}
            (Some(p), Some(q)) if p == q => {}
            _ => return false,
        }
        k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# anonymous clients
topic read public/#
topic deny public/secret

user alice
topic readwrite alice/#
topic read sensors/+/temp
topic deny sensors/roof/temp

user bob
topic sensors/#
topic write  cmd/with space/x

pattern readwrite devices/%c/#
pattern read users/%u/inbox
pattern deny devices/%c/locked
";

    #[test]
    fn anonymous_clients_get_the_rules_before_the_first_user() {
        let acl = AclFile::parse(FILE).unwrap();
        let anon = acl.for_client("anon-1", None);
        assert!(anon.can_read("public/news"));
        assert!(!anon.can_write("public/news"));
        assert!(!anon.can_read("public/secret"), "deny wins");
        assert!(!anon.can_read("alice/x"));
        // Patterns without %u apply to anonymous clients too.
        assert!(anon.can_write("devices/anon-1/state"));
        assert!(
            !anon.can_read("users//inbox"),
            "%u never matches without a username"
        );
    }

    #[test]
    fn a_users_own_rules_come_first_and_deny_wins_among_them() {
        let acl = AclFile::parse(FILE).unwrap();
        let alice = acl.for_client("a1", Some("alice"));
        assert!(alice.can_write("alice/x") && alice.can_read("alice/x/y"));
        assert!(alice.can_read("sensors/kitchen/temp"));
        assert!(!alice.can_write("sensors/kitchen/temp"));
        assert!(!alice.can_read("sensors/roof/temp"));
        assert!(
            !alice.can_read("public/news"),
            "anonymous rules are not alice's"
        );
        assert!(alice.can_read("users/alice/inbox"));
        assert!(!alice.can_read("users/bob/inbox"));
        assert!(alice.can_write("devices/a1/x"));
        assert!(!alice.can_write("devices/a1/locked"));
        assert!(!alice.can_write("devices/a2/x"));
        let bob = acl.for_client("b1", Some("bob"));
        assert!(bob.can_read("sensors/roof/temp") && bob.can_write("sensors/a"));
        assert!(
            bob.can_write("cmd/with space/x"),
            "topics run to the end of the line"
        );
        assert!(!bob.can_read("cmd/with space/x"));
        // An unknown user has only the patterns.
        let carol = acl.for_client("c1", Some("carol"));
        assert!(carol.can_read("users/carol/inbox"));
        assert!(!carol.can_read("public/news") && !carol.can_read("sensors/a"));
    }

    #[test]
    fn a_wildcard_in_client_id_or_username_never_matches_a_pattern() {
        let acl = AclFile::parse(FILE).unwrap();
        for (id, user) in [
            ("dev+", None),
            ("#", Some("alice")),
            ("d", Some("mallory/#")),
        ] {
            let c = acl.for_client(id, user);
            assert!(!c.can_write(&format!("devices/{id}/x")), "{id} {user:?}");
            if let Some(u) = user {
                assert!(!c.can_read(&format!("users/{u}/inbox")));
            }
        }
        // Alice's own rules still apply.
        assert!(acl.for_client("#", Some("alice")).can_read("alice/x"));
    }

    #[test]
    fn substitution_is_one_pass_so_a_client_id_holding_percent_u_stays_itself() {
        assert_eq!(substitute("d/%c/%u/%x%", "%u", "bob"), "d/%u/bob/%x%");
        let acl = AclFile::parse("pattern readwrite devices/%c/#\n").unwrap();
        let c = acl.for_client("%u", Some("bob"));
        assert!(c.can_write("devices/%u/x"));
        assert!(
            !c.can_write("devices/bob/x"),
            "not the client id bob's topics"
        );
    }

    #[test]
    fn dollar_topics_match_only_rules_that_start_with_dollar() {
        let acl =
            AclFile::parse("topic read #\ntopic read +/x\ntopic read $SYS/broker/#\n").unwrap();
        let c = acl.for_client("c", None);
        assert!(c.can_read("a/b") && c.can_read("a/x"));
        assert!(!c.can_read("$SYS/load") && !c.can_read("$x/x"));
        assert!(c.can_read("$SYS/broker/uptime"));
    }

    #[test]
    fn bad_lines_are_reported_with_their_numbers() {
        let text =
            "topic read ok/#\nfoo bar\nuser\ntopic read a/#/b\ntopic deny\npattern write x+/y\n";
        let errors = AclFile::parse(text).unwrap_err().0;
        let lines: Vec<usize> = errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6], "{errors:?}");
    }

    #[test]
    fn filter_access_is_decided_once_where_the_answer_cannot_vary() {
        let acl = AclFile::parse(FILE).unwrap();
        let alice = acl.for_client("a1", Some("alice"));
        use FilterAccess::*;
        assert_eq!(alice.filter_access("alice/#"), Allowed);
        assert_eq!(alice.filter_access("alice/x/+"), Allowed);
        assert_eq!(
            alice.filter_access("sensors/+/temp"),
            PerMessage,
            "roof is denied"
        );
        assert_eq!(alice.filter_access("sensors/kitchen/temp"), Allowed);
        assert_eq!(alice.filter_access("sensors/roof/temp"), Denied);
        assert_eq!(alice.filter_access("public/#"), Denied);
        assert_eq!(alice.filter_access("#"), PerMessage);
        assert_eq!(alice.filter_access("users/alice/inbox"), Allowed);
        assert_eq!(alice.filter_access("users/+/inbox"), PerMessage);
        assert_eq!(
            alice.filter_access("devices/a1/#"),
            PerMessage,
            "locked is denied"
        );
        assert_eq!(alice.filter_access("devices/a2/#"), Denied);
        let anon = acl.for_client("n", None);
        assert_eq!(anon.filter_access("public/+"), PerMessage);
        assert_eq!(anon.filter_access("public/news"), Allowed);
        assert_eq!(anon.filter_access("$SYS/#"), Denied);
    }

    /// Every decision `filter_access` makes once must agree with `can_read` on every
    /// topic the filter matches, over a grid of topics and filters.
    #[test]
    fn filter_access_agrees_with_can_read_on_every_topic() {
        let acl = AclFile::parse(FILE).unwrap();
        let words = [
            "alice", "sensors", "roof", "kitchen", "temp", "public", "secret", "devices", "a1",
            "locked", "users", "inbox", "$SYS", "x",
        ];
        let mut topics = Vec::new();
        for a in words {
            topics.push(a.to_string());
            for b in words {
                topics.push(format!("{a}/{b}"));
                for c in words {
                    topics.push(format!("{a}/{b}/{c}"));
                }
            }
        }
        let mut filters = vec!["#".to_string(), "+".to_string(), "+/+".to_string()];
        for a in words {
            for f in [
                format!("{a}/#"),
                format!("{a}/+/temp"),
                format!("{a}/+"),
                format!("+/{a}/#"),
            ] {
                filters.push(f);
            }
        }
        for who in [("a1", Some("alice")), ("n", None), ("b", Some("bob"))] {
            let c = acl.for_client(who.0, who.1);
            for f in &filters {
                let verdict = c.filter_access(f);
                let readable: Vec<bool> = topics
                    .iter()
                    .filter(|t| matches(f, t))
                    .map(|t| c.can_read(t))
                    .collect();
                match verdict {
                    FilterAccess::Allowed => assert!(readable.iter().all(|&r| r), "{who:?} {f}"),
                    FilterAccess::Denied => assert!(readable.iter().all(|&r| !r), "{who:?} {f}"),
                    FilterAccess::PerMessage => {}
                }
            }
        }
    }

    #[test]
    fn covers_and_intersects_follow_the_matching_rules() {
        assert!(covers("a/#", "a/b/+") && covers("a/#", "a") && covers("#", "a/#"));
        assert!(covers("a/+", "a/b") && !covers("a/+", "a/#") && !covers("a/b", "a/+"));
        assert!(!covers("#", "$SYS/x") && covers("$SYS/#", "$SYS/x/+"));
        assert!(!covers("a", "a/#"));
        assert!(intersects("a/+", "+/b") && intersects("a/#", "a") && intersects("a", "a/#"));
        assert!(!intersects("a/b", "a/c") && !intersects("a", "a/b"));
        assert!(!intersects("#", "$SYS/#") && !intersects("+/x", "$a/x"));
        assert!(intersects("$SYS/#", "$SYS/+"));
    }
}
