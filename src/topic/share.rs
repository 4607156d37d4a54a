//! Shared subscription filters, `$share/{ShareName}/{filter}` (MQTT 5.0 §4.8.2),
//! accepted from MQTT 3.1.1 and 3.1 clients too.
//!
//! A filter that starts with `$share/` names a group: every message matching the
//! filter part goes to one member of the group, not to each. The share name is at
//! least one character and holds no `/`, `+` or `#`; a valid topic filter follows
//! it after one `/`. Anything else starting with `$share/` (or `$share` alone) is
//! an invalid filter: SUBSCRIBE refuses it (0x80 for 3.1.1) rather than subscribe
//! to it as a plain filter no topic could match.

/// The prefix that makes a filter shared.
pub const SHARE_PREFIX: &str = "$share/";

/// A valid shared filter, as slices of the whole subscribed string (which is also
/// the group's name: two sessions subscribed with the same string are in the same
/// group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    pub share_name: &'a str,
    /// The topic filter messages are matched against.
    pub filter: &'a str,
}

/// What a subscribed filter string is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind<'a> {
    /// Not a shared filter: an ordinary one (still to be validated as such).
    Plain,
    /// A well-formed shared filter.
    Shared(SharedFilter<'a>),
    /// Starts like a shared filter but breaks its rules [MQTT-4.8.2-1, MQTT-4.8.2-2].
    Invalid,
}

/// Whether `filter` is shared at all: the one check every filter pays.
#[inline]
pub fn is_shared(filter: &str) -> bool {
    filter.starts_with("$share/") || filter == "$share"
}

/// Classifies a subscribed filter string.
pub fn parse(filter: &str) -> FilterKind<'_> {
    if !is_shared(filter) {
        return FilterKind::Plain;
    }
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return FilterKind::Invalid;
    };
    let Some((share_name, topic_filter)) = rest.split_once('/') else {
        return FilterKind::Invalid;
    };
    if share_name.is_empty()
        || share_name.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
        || !crate::protocol::topic::valid_topic_filter(topic_filter)
    {
        return FilterKind::Invalid;
    }
    FilterKind::Shared(SharedFilter {
        share_name,
        filter: topic_filter,
    })
}

/// The topic filter part of a shared filter already known valid (`""` otherwise).
pub fn filter_part(shared: &str) -> &str {
    match parse(shared) {
        FilterKind::Shared(s) => s.filter,
        _ => "",
    }
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    fn shared(f: &str) -> (&str, &str) {
        match parse(f) {
            FilterKind::Shared(s) => (s.share_name, s.filter),
            other => panic!("{f}: {other:?}"),
        }
    }

    #[test]
    fn share_name_and_filter_are_split_at_the_first_slash_after_the_prefix() {
        assert_eq!(shared("$share/g/a/b"), ("g", "a/b"));
        assert_eq!(shared("$share/group-1/#"), ("group-1", "#"));
        assert_eq!(shared("$share/g/+/x/#"), ("g", "+/x/#"));
        assert_eq!(shared("$share/g//"), ("g", "/"));
        assert_eq!(shared("$share/g/$SYS/#"), ("g", "$SYS/#"));
        assert_eq!(filter_part("$share/g/a/+"), "a/+");
    }

    #[test]
    fn invalid_shared_filters_are_refused_not_taken_as_plain() {
        for f in [
            "$share",
            "$share/",
            "$share/g",
            "$share//a",
            "$share/g/",
            "$share/g+/a",
            "$share/+/a",
            "$share/#/a",
            "$share/g#/a",
            "$share/g/a/#/b",
            "$share/g/a+",
        ] {
            assert_eq!(parse(f), FilterKind::Invalid, "{f}");
        }
    }

    #[test]
    fn other_filters_are_plain() {
        for f in ["a/b", "#", "$SYS/#", "$shared/a", "share/g/a", "$sharex"] {
            assert_eq!(parse(f), FilterKind::Plain, "{f}");
            assert!(!is_shared(f));
        }
    }
}
