//! Topic names and topic filters (MQTT 3.1.1 §4.7): what makes each well formed, and
//! whether a filter matches a name.
//!
//! The decoder already rejects PUBLISH topic names that break these rules; the broker
//! calls [`valid_topic_filter`] on each SUBSCRIBE filter (answering 0x80 for a bad one)
//! and [`matches()`] when it delivers retained messages to a new subscription.

/// Longest topic name or filter the wire format can carry (a 16-bit length prefix).
const MAX_LEN: usize = 65_535;

/// Whether `name` may be used as the topic of a PUBLISH (or a will): non-empty
/// [MQTT-4.7.3-1], no wildcard characters [MQTT-3.3.2-2], no U+0000 [MQTT-4.7.3-2],
/// and short enough to be encoded (at most 65535 bytes).
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_LEN && !name.bytes().any(|b| matches!(b, b'+' | b'#' | 0))
}

/// Whether `filter` may be subscribed to: non-empty, at most 65535 bytes, no U+0000,
/// '#' only as the whole last level [MQTT-4.7.1-2] and '+' only as a whole level
/// [MQTT-4.7.1-3]. The decoder leaves this to the broker, which answers an invalid
/// filter with SUBACK 0x80 instead of closing the connection.
pub fn valid_topic_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_LEN {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        match level {
            "+" => {}
            "#" => return levels.peek().is_none(),
            _ => {
                if level.bytes().any(|b| matches!(b, b'+' | b'#' | 0)) {
                    return false;
                }
            }
        }
    }
    true
}

/// Number of levels in a topic name or filter (`a/b/c` has 3, `/` has 2).
pub fn level_count(bytes: &[u8]) -> usize {
    1 + bytes.iter().filter(|&&b| b == b'/').count()
}

/// Whether `topic` (a name or a filter) is within the configured length (bytes) and
/// level limits. A topic shorter than `max_levels` bytes cannot have more levels than
/// that, so short topics are never scanned.
pub fn within_limits(topic: &str, max_length: usize, max_levels: usize) -> bool {
    topic.len() <= max_length
        && (topic.len() < max_levels || level_count(topic.as_bytes()) <= max_levels)
}

/// Whether the topic filter `filter` matches the topic name `topic` (§4.7). Used to
/// pick retained messages for a new subscription, so it never allocates.
///
/// `filter` is expected to be valid (see [`valid_topic_filter`]); for an invalid one the
/// answer is unspecified but the call is still safe. Rules implemented:
/// - '+' matches exactly one level, which may be empty ("a/+/b" matches "a//b");
/// - '#' matches the parent level and any number of children ("sport/#" matches
///   "sport");
/// - a topic beginning with '$' is not matched by a filter whose first level is a
///   wildcard [MQTT-4.7.2-1].
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_counted_by_separators_and_limits_include_their_bounds() {
        assert_eq!(level_count(b"a"), 1);
        assert_eq!(level_count(b"/"), 2);
        assert_eq!(level_count(b"a/b/c"), 3);
        assert_eq!(level_count(b"a//"), 3);
        assert!(within_limits("a/b/c", 5, 3));
        assert!(!within_limits("a/b/c", 4, 3));
        assert!(!within_limits("a/b/c", 5, 2));
        assert!(within_limits("abcdef", 6, 1));
        assert!(!within_limits("///", 10, 3));
        assert!(within_limits("///", 10, 4));
    }

    #[test]
    fn topic_name_must_be_non_empty_and_wildcard_free() {
        assert!(valid_topic_name("a"));
        assert!(valid_topic_name("/"));
        assert!(valid_topic_name("sport/tennis/player1"));
        assert!(valid_topic_name("$SYS/broker/uptime"));
        assert!(valid_topic_name("a b/ü/😀"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name("sport/+"));
        assert!(!valid_topic_name("sport/#"));
        assert!(!valid_topic_name("sport+"));
        assert!(!valid_topic_name("a\0b"));
    }

    #[test]
    fn topic_name_length_is_limited_to_65535_bytes() {
        assert!(valid_topic_name(&"a".repeat(65_535)));
        assert!(!valid_topic_name(&"a".repeat(65_536)));
    }

    #[test]
    fn topic_filter_wildcards_must_occupy_whole_levels() {
        for ok in [
            "#",
            "+",
            "/",
            "sport/#",
            "sport/tennis/#",
            "+/tennis/#",
            "sport/+/player1",
            "+/+",
            "/+",
            "+/",
            "a//b",
            "$SYS/#",
        ] {
            assert!(valid_topic_filter(ok), "{ok:?} should be valid");
        }
        for bad in [
            "",
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "#/",
            "sport+",
            "sport/+tennis",
            "++",
            "##",
            "a\0b",
        ] {
            assert!(!valid_topic_filter(bad), "{bad:?} should be invalid");
        }
    }

    #[test]
    fn topic_filter_length_is_limited_to_65535_bytes() {
        assert!(valid_topic_filter(&"a".repeat(65_535)));
        assert!(!valid_topic_filter(&"a".repeat(65_536)));
    }

    #[test]
    fn multi_level_wildcard_matches_parent_and_children() {
        // §4.7.1.2
        assert!(matches("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/score/wimbledon"
        ));
        assert!(matches("sport/#", "sport"));
        assert!(matches("#", "sport/tennis"));
        assert!(matches("#", "/finance"));
        assert!(!matches("sport/tennis/player1/#", "sport/tennis/player2"));
        assert!(!matches("sport/#", "sports"));
    }

    #[test]
    fn single_level_wildcard_matches_exactly_one_level() {
        // §4.7.1.3
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(matches("sport/tennis/+", "sport/tennis/player2"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(matches("sport/+", "sport/"));
        assert!(!matches("sport/+", "sport"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("+/tennis/#", "sport/tennis/player1"));
        assert!(matches("+/tennis/#", "sport/tennis"));
    }

    #[test]
    fn single_level_wildcard_matches_an_empty_level() {
        assert!(matches("a/+/b", "a//b"));
        assert!(matches("/+", "/"));
        assert!(matches("+/", "/"));
        assert!(matches("+/+", "/"));
        assert!(!matches("a/+/b", "a/b"));
    }

    #[test]
    fn filters_without_wildcards_match_only_equal_names() {
        assert!(matches("sport/tennis", "sport/tennis"));
        assert!(matches("/", "/"));
        assert!(matches("a//b", "a//b"));
        assert!(!matches("sport/tennis", "sport/tennis/"));
        assert!(!matches("sport/tennis", "sport"));
        assert!(!matches("sport", "Sport"));
        assert!(!matches("/finance", "finance"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        // [MQTT-4.7.2-1] and the §4.7.2 examples.
        assert!(!matches("#", "$SYS/broker/uptime"));
        assert!(!matches("#", "$SYS"));
        assert!(!matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(!matches("+", "$SYS"));
        assert!(matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/#", "$SYS"));
        assert!(matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(matches("$SYS/monitor/Clients", "$SYS/monitor/Clients"));
        // '$' elsewhere than the first character is ordinary.
        assert!(matches("#", "a/$SYS"));
        assert!(matches("+/$x", "a/$x"));
    }
}
