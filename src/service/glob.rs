//! Topic names and glob patterns: which names are legal, whether a pattern
//! matches a name, and whether two patterns can match one name.
//!
//! Kafka topic names use only ASCII letters, digits, `.`, `_` and `-`, so
//! `*` and `?` can never be part of one: a route name with either is a
//! pattern, anything else an exact topic.

/// Whether `name` is a glob pattern rather than a topic name.
pub(crate) fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?'])
}

/// Internal topics (`__consumer_offsets`, `__transaction_state`) match no
/// pattern.
pub(crate) fn is_internal(topic: &str) -> bool {
    topic.starts_with("__")
}

/// Why `name` is not a legal topic name (Kafka's rule: 1 to 249 of
/// `[a-zA-Z0-9._-]`, not `.` or `..`).
pub(crate) fn check_topic(name: &str) -> Result<(), String> {
    check(name, false)
}

/// Why `pattern` is not a legal pattern: a topic name that may also hold
/// `*` (any run of characters) and `?` (one character).
pub(crate) fn check_pattern(pattern: &str) -> Result<(), String> {
    check(pattern, true)
}

fn check(name: &str, pattern: bool) -> Result<(), String> {
    let what = if pattern { "pattern" } else { "topic name" };
    if name.is_empty() {
        return Err(format!("empty {what}"));
    }
    if name.len() > 249 {
        return Err(format!("{what} `{name}` is longer than 249 characters"));
    }
    if name == "." || name == ".." {
        return Err(format!("`{name}` is not a legal {what}"));
    }
    if let Some(bad) = name.chars().find(|&c| {
        !(c.is_ascii_alphanumeric()
            || c == '.'
            || c == '_'
            || c == '-'
            || (pattern && (c == '*' || c == '?')))
    }) {
        return Err(format!(
            "{what} `{name}` has `{bad}`; topic names use only ASCII letters, digits, `.`, `_` \
             and `-`{}",
            if pattern {
                ", and patterns `*` and `?`"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

/// Whether `pattern` matches the whole of `name`: `*` any run of
/// characters (also none), `?` exactly one. Internal topics never match.
pub(crate) fn matches(pattern: &str, name: &str) -> bool {
    !is_internal(name) && glob(pattern.as_bytes(), name.as_bytes())
}

/// Glob matching with one backtracking point (the last `*`): linear for
/// the patterns topic names allow.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < s.len() {
        if i < p.len() && (p[i] == b'?' || p[i] == s[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == b'*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            // Let the last `*` take one more character.
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == b'*')
}

/// Whether some name matches both patterns (their languages intersect):
/// a search over pairs of positions, moving both patterns over one common
/// character at a time.
pub(crate) fn may_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut seen = std::collections::HashSet::new();
    let mut todo = vec![(0usize, 0usize)];
    while let Some((i, j)) = todo.pop() {
        if !seen.insert((i, j)) {
            continue;
        }
        // A `*` may match nothing.
        if a.get(i) == Some(&b'*') {
            todo.push((i + 1, j));
        }
        if b.get(j) == Some(&b'*') {
            todo.push((i, j + 1));
        }
        if i == a.len() && j == b.len() {
            return true;
        }
        let (Some(&x), Some(&y)) = (a.get(i), b.get(j)) else {
            continue;
        };
        let wild = |c: u8| c == b'*' || c == b'?';
        if wild(x) || wild(y) || x == y {
            let ni = if x == b'*' { i } else { i + 1 };
            let nj = if y == b'*' { j } else { j + 1 };
            if (ni, nj) != (i, j) {
                todo.push((ni, nj));
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matching() {
        assert!(matches("content.*", "content.edited"));
        assert!(matches("content.*", "content."));
        assert!(!matches("content.*", "content"));
        assert!(!matches("content.*", "xcontent.a"));
        assert!(matches("*.audit", "orders.audit"));
        assert!(matches("a?c", "abc"));
        assert!(!matches("a?c", "ac"));
        assert!(matches("*a*b*", "xxaxxbxx"));
        assert!(!matches("*a*b*", "xxbxxaxx"));
        assert!(matches("orders", "orders"));
        assert!(!matches("*", "__consumer_offsets"));
        assert!(matches("*", "orders"));
    }

    #[test]
    fn overlaps() {
        assert!(may_overlap("content.*", "*.audit")); // content.audit
        assert!(may_overlap("a*", "a*"));
        assert!(!may_overlap("content.*", "orders.*"));
        assert!(!may_overlap("a?", "a??"));
        assert!(may_overlap("a*", "a??"));
        assert!(may_overlap("*", "x"));
        assert!(!may_overlap("*.a", "*.b"));
        assert!(may_overlap("a*b", "*ab*"));
    }

    #[test]
    fn overlap_agrees_with_matching_on_small_names() {
        let pats = [
            "a*", "*b", "a?b", "?", "??", "*a*", "ab", "a*b*", "*", "b?*",
        ];
        let names: Vec<String> = {
            let mut v = vec![String::new()];
            for len in 1..=4 {
                let mut next = Vec::new();
                for n in v.iter().filter(|n| n.len() == len - 1) {
                    for c in ['a', 'b', 'c'] {
                        next.push(format!("{n}{c}"));
                    }
                }
                v.extend(next);
            }
            v
        };
        for a in pats {
            for b in pats {
                let witness = names.iter().any(|n| matches(a, n) && matches(b, n));
                if witness {
                    assert!(may_overlap(a, b), "{a} and {b} overlap");
                }
            }
        }
        assert!(!may_overlap("a?b", "ab"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_topic("orders.v1_x-y").is_ok());
        assert!(check_topic("").is_err());
        assert!(check_topic("orders*").is_err());
        assert!(check_topic("or ders").is_err());
        assert!(check_topic("..").is_err());
        assert!(check_pattern("content.*").is_ok());
        assert!(check_pattern("content/*").is_err());
    }
}
