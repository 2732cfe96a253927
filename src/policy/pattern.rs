//! Name patterns over canonical `<registry>/<repository>` names.
//!
//! `*` matches any characters within one path segment (never `/`); `**`
//! matches any characters across segments (including none, and `/`).
//! Everything else matches itself.
//!
//! **Specificity** (which of several matching patterns wins): the pattern
//! with the longer literal prefix (characters before its first wildcard)
//! wins; then the one with more literal characters in total; then the one
//! without `**`; then the lexically smaller pattern text, so the choice is
//! always deterministic.
//!
//! [`PatternIndex`] finds the first matching pattern of a list without
//! trying them all: only the patterns whose literal prefix is a prefix of
//! the name can match, and those are found by one binary search over the
//! distinct literal prefixes.
//!
//! [`canonical_pattern`] puts a pattern as written into the form requests
//! are matched in (see [`crate::routing`]): the registry lowercased, Docker
//! Hub's other host names read as `docker.io`, and Docker's `library/`
//! added to a one-component Docker Hub name. A pattern that holds a tag, a
//! digest or an uppercase repository name could never match a request, so
//! it is an error rather than a rule that silently guards nothing.

use std::cmp::Ordering;
use std::collections::BTreeMap;

/// `text` in the form requests are matched in: `Docker.io/nginx`,
/// `index.docker.io/library/nginx` and `registry-1.docker.io/nginx` all
/// become `docker.io/library/nginx`; wildcards keep their meaning
/// (`docker.io/*` is `docker.io/library/*`, `docker.io/**` is unchanged).
/// A tag, a digest or an uppercase letter in the repository part is an
/// error naming the pattern.
pub fn canonical_pattern(text: &str) -> Result<String, String> {
    const FORM: &str = "name patterns match <registry>/<repository>, every tag and digest of it";
    if let Some(at) = text.find('@') {
        return Err(format!(
            "{text:?} holds a digest ({:?}): {FORM}; write {:?}",
            &text[at..],
            &text[..at]
        ));
    }
    let Some((host, path)) = text.split_once('/') else {
        // A registry (or wildcard) only: left as written; `check` reports
        // one that can match nothing.
        return Ok(text.to_owned());
    };
    if let Some(colon) = path.find(':') {
        return Err(format!(
            "{text:?} holds a tag ({:?}): {FORM}; write {:?}",
            &path[colon..],
            format!("{host}/{}", &path[..colon])
        ));
    }
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!(
            "{text:?}: repository names are lowercase (registries refuse any other), \
             so this pattern could never match; write {:?}",
            format!("{host}/{}", path.to_ascii_lowercase())
        ));
    }
    let mut host = host.to_ascii_lowercase();
    if crate::oci::DOCKER_HUB_ALIASES.contains(&host.as_str()) {
        host = "docker.io".to_owned();
    }
    // Requests for a one-component Docker Hub name are routed as
    // `library/<name>`; a pattern of one component means the same (`**`
    // already spans components, so it is left alone).
    if host == "docker.io" && !path.is_empty() && !path.contains('/') && !path.contains("**") {
        return Ok(format!("docker.io/library/{path}"));
    }
    Ok(format!("{host}/{path}"))
}

/// Why `pattern` (canonical, as [`canonical_pattern`] returns it) can
/// match no request served through upstreams named `registries`, if it
/// cannot: it names no repository, or its registry part matches none of
/// them.
pub fn unreachable_reason(pattern: &str, registries: &[&str]) -> Option<String> {
    let Some((host, _)) = pattern.split_once('/') else {
        return (!pattern.contains("**")).then(|| {
            format!(
                "{pattern:?} names no repository (requests are matched on \
                 <registry>/<repository>), so it matches no image"
            )
        });
    };
    if host.contains("**") {
        return None;
    }
    let host_pattern = Pattern::new(host).ok()?;
    if registries.iter().any(|r| host_pattern.matches(r)) {
        return None;
    }
    Some(format!(
        "registry {host:?} of {pattern:?} is not a configured upstream ({}), so it matches \
         no image served here",
        if registries.is_empty() {
            "none is configured".to_owned()
        } else {
            format!("upstreams: {}", registries.join(", "))
        }
    ))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `*`
    Segment,
    /// `**`
    Any,
}

/// A compiled name pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

impl Pattern {
    pub fn new(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("empty name pattern".into());
        }
        if text.contains("***") {
            return Err(format!("{text:?}: use * or **, not ***"));
        }
        if text.contains(['@', ' ']) {
            return Err(format!(
                "{text:?}: patterns match <registry>/<repository>, without tag or digest"
            ));
        }
        let mut tokens = Vec::new();
        let mut literal = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '*' {
                if !literal.is_empty() {
                    tokens.push(Token::Literal(std::mem::take(&mut literal)));
                }
                if chars.peek() == Some(&'*') {
                    chars.next();
                    tokens.push(Token::Any);
                } else {
                    tokens.push(Token::Segment);
                }
            } else {
                literal.push(c);
            }
        }
        if !literal.is_empty() {
            tokens.push(Token::Literal(literal));
        }
        Ok(Pattern {
            text: text.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `name` (a canonical `<registry>/<repository>`) matches.
    pub fn matches(&self, name: &str) -> bool {
        match_tokens(&self.tokens, name)
    }

    /// The characters before the first wildcard (all of them for a
    /// pattern without wildcards): every name the pattern matches starts
    /// with it.
    pub fn literal_prefix(&self) -> &str {
        match self.tokens.first() {
            Some(Token::Literal(l)) => l,
            _ => "",
        }
    }

    fn literal_prefix_len(&self) -> usize {
        self.literal_prefix().len()
    }

    fn literal_len(&self) -> usize {
        self.tokens
            .iter()
            .map(|t| match t {
                Token::Literal(l) => l.len(),
                _ => 0,
            })
            .sum()
    }

    fn has_any(&self) -> bool {
        self.tokens.contains(&Token::Any)
    }

    /// Orders patterns from most to least specific (see the module doc).
    pub fn specificity_order(a: &Pattern, b: &Pattern) -> Ordering {
        b.literal_prefix_len()
            .cmp(&a.literal_prefix_len())
            .then(b.literal_len().cmp(&a.literal_len()))
            .then(a.has_any().cmp(&b.has_any()))
            .then(a.text.cmp(&b.text))
    }
}

fn match_tokens(tokens: &[Token], name: &str) -> bool {
    match tokens.split_first() {
        None => name.is_empty(),
        Some((Token::Literal(l), rest)) => name
            .strip_prefix(l.as_str())
            .is_some_and(|r| match_tokens(rest, r)),
        Some((Token::Segment, rest)) => {
            // Try every split point within the current segment.
            let segment_end = name.find('/').unwrap_or(name.len());
            (0..=segment_end)
                .filter(|&i| name.is_char_boundary(i))
                .any(|i| match_tokens(rest, &name[i..]))
        }
        Some((Token::Any, rest)) => (0..=name.len())
            .filter(|&i| name.is_char_boundary(i))
            .any(|i| match_tokens(rest, &name[i..])),
    }
}

/// An index over a list of patterns that answers "which is the first
/// pattern of the list matching this name?" by trying only the patterns
/// that can match: those whose literal prefix is a prefix of the name.
///
/// The distinct literal prefixes are kept sorted, each with a link to the
/// longest other prefix that is a proper prefix of it. Every prefix of a
/// name that is in the index is a prefix of the greatest indexed prefix
/// `p` that sorts at or before the name (anything sorting between such a
/// prefix and the name starts with it), so a lookup is one binary search
/// for `p`, then a walk up `p`'s links keeping the prefixes no longer than
/// what `p` and the name have in common: O(log prefixes + name length)
/// instead of O(patterns), and the longest prefixes come first.
#[derive(Debug, Clone, Default)]
pub struct PatternIndex {
    /// Sorted by `prefix` (bytewise, as `str` orders).
    prefixes: Vec<PrefixEntry>,
}

#[derive(Debug, Clone)]
struct PrefixEntry {
    prefix: Box<str>,
    /// The longest other indexed prefix that is a proper prefix of this one.
    parent: Option<u32>,
    /// Positions in the list of the patterns with exactly this literal
    /// prefix, ascending.
    positions: Vec<u32>,
}

impl PatternIndex {
    /// Indexes `patterns`; lookups answer positions in this sequence.
    pub fn new<'a>(patterns: impl IntoIterator<Item = &'a Pattern>) -> PatternIndex {
        let mut by_prefix: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (position, pattern) in patterns.into_iter().enumerate() {
            let position = u32::try_from(position).expect("fewer than 2^32 patterns");
            by_prefix
                .entry(pattern.literal_prefix())
                .or_default()
                .push(position);
        }
        let mut prefixes: Vec<PrefixEntry> = Vec::with_capacity(by_prefix.len());
        // The chain of prefixes of the previous entry, shortest first: in
        // sorted order a prefix comes right before the strings it starts,
        // so the parent of each entry is on this stack.
        let mut chain: Vec<u32> = Vec::new();
        for (prefix, positions) in by_prefix {
            while let Some(&top) = chain.last() {
                if prefix.starts_with(&*prefixes[top as usize].prefix) {
                    break;
                }
                chain.pop();
            }
            let index = u32::try_from(prefixes.len()).expect("fewer than 2^32 prefixes");
            prefixes.push(PrefixEntry {
                prefix: prefix.into(),
                parent: chain.last().copied(),
                positions,
            });
            chain.push(index);
        }
        PatternIndex { prefixes }
    }

    /// The lowest position whose pattern matches `name`, where
    /// `matches(position)` says whether the pattern at `position` matches
    /// (only called for patterns whose literal prefix starts `name`).
    pub fn first_match(&self, name: &str, matches: impl Fn(usize) -> bool) -> Option<usize> {
        let name_bytes = name.as_bytes();
        let after = self
            .prefixes
            .partition_point(|e| e.prefix.as_bytes() <= name_bytes);
        let mut next = after.checked_sub(1);
        let common = next.map_or(0, |i| {
            common_prefix_len(self.prefixes[i].prefix.as_bytes(), name_bytes)
        });
        let mut best: Option<usize> = None;
        while let Some(i) = next {
            let entry = &self.prefixes[i];
            next = entry.parent.map(|p| p as usize);
            if entry.prefix.len() > common {
                // A prefix of the greatest entry, but not of the name.
                continue;
            }
            for &position in &entry.positions {
                let position = position as usize;
                if best.is_some_and(|b| position >= b) {
                    break;
                }
                if matches(position) {
                    best = Some(position);
                    break;
                }
            }
        }
        best
    }
}

fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    #[test]
    fn matching_table() {
        let table: &[(&str, &str, bool)] = &[
            ("r:5001/demo/app", "r:5001/demo/app", true),
            ("r:5001/demo/app", "r:5001/demo/app2", false),
            ("r:5001/base/*", "r:5001/base/alpine", true),
            ("r:5001/base/*", "r:5001/base/x/y", false),
            ("r:5001/base/*", "r:5001/base/", true),
            ("r:5001/base/*", "r:5001/based/x", false),
            ("r:5001/sandbox/**", "r:5001/sandbox/a/b/c", true),
            ("r:5001/sandbox/**", "r:5001/sandbox/a", true),
            ("r:5001/sandbox/**", "r:5001/sandboxes/a", false),
            ("**", "anything/at/all", true),
            ("*/library/*", "docker.io/library/nginx", true),
            ("*/library/*", "docker.io/library/a/b", false),
            ("docker.io/*/nginx", "docker.io/library/nginx", true),
            ("docker.io/**/nginx", "docker.io/a/b/nginx", true),
            ("docker.io/**/nginx", "docker.io/nginx", false),
            ("ghcr.io/org/app-*", "ghcr.io/org/app-web", true),
            ("ghcr.io/org/app-*", "ghcr.io/org/app-web/sub", false),
        ];
        for (pattern, name, want) in table {
            assert_eq!(p(pattern).matches(name), *want, "{pattern} vs {name}");
        }
    }

    #[test]
    fn specificity_table() {
        // (a, b): a is more specific than b.
        let table: &[(&str, &str)] = &[
            ("r/sandbox/app", "r/sandbox/**"),
            ("r/sandbox/*", "r/**"),
            ("r/sandbox/app-*", "r/sandbox/*"),
            ("r/a/*/c", "r/a/**"),
            ("r/a/*/c", "r/a/*"),
            ("r/a/*", "r/a/**"),
            ("r/a/**", "**"),
            ("r/a/*/x", "r/a/*/*"),
        ];
        for (a, b) in table {
            assert_eq!(
                Pattern::specificity_order(&p(a), &p(b)),
                Ordering::Less,
                "{a} should beat {b}"
            );
            assert_eq!(
                Pattern::specificity_order(&p(b), &p(a)),
                Ordering::Greater,
                "{b} vs {a}"
            );
        }
        // Complete ties are broken by text, deterministically.
        assert_eq!(
            Pattern::specificity_order(&p("r/*/a"), &p("r/*/b")),
            Ordering::Less
        );
    }

    /// A deterministic generator (xorshift64*), so failures reproduce.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }
    }

    const REGISTRIES: &[&str] = &["r", "r:5001", "ghcr.io", "a"];
    const WORDS: &[&str] = &["a", "b", "ab", "app", "app-", "app-web", "x", "é"];

    /// A pattern over a small vocabulary, so that patterns share prefixes
    /// and names often match several of them.
    fn gen_pattern(g: &mut Gen) -> String {
        let mut text = String::new();
        match g.below(8) {
            0 => text.push_str("**"),
            1 => text.push('*'),
            _ => text.push_str(g.pick(REGISTRIES)),
        }
        for _ in 0..g.below(4) {
            text.push('/');
            // One segment: literals and wildcards, never `***`.
            for _ in 0..=g.below(2) {
                match g.below(6) {
                    0 => text.push('*'),
                    1 => text.push_str("**"),
                    _ => text.push_str(g.pick(WORDS)),
                }
                if text.ends_with('*') && g.below(2) == 0 {
                    text.push_str(g.pick(WORDS));
                }
            }
        }
        if g.below(10) == 0 {
            text.push_str(g.pick(&["*", "**", "-"]));
        }
        text
    }

    /// A name: made up, or one of `patterns` with its wildcards filled in
    /// (so that it matches at least that pattern).
    fn gen_name(g: &mut Gen, patterns: &[Pattern]) -> String {
        if patterns.is_empty() || g.below(3) == 0 {
            let mut name = g.pick(REGISTRIES).to_owned();
            for _ in 0..=g.below(4) {
                name.push('/');
                name.push_str(g.pick(WORDS));
            }
            return name;
        }
        let mut name = String::new();
        for token in &patterns[g.below(patterns.len())].tokens {
            match token {
                Token::Literal(l) => name.push_str(l),
                Token::Segment => name.push_str(g.pick(&["", "a", "web", "x-1"])),
                Token::Any => name.push_str(g.pick(&["", "a", "a/b", "x/app-web/y"])),
            }
        }
        name
    }

    fn gen_patterns(g: &mut Gen, n: usize) -> Vec<Pattern> {
        let mut patterns: Vec<Pattern> = Vec::new();
        while patterns.len() < n {
            if let Ok(p) = Pattern::new(&gen_pattern(g)) {
                if !patterns.contains(&p) {
                    patterns.push(p);
                }
            }
        }
        patterns
    }

    #[test]
    fn index_agrees_with_a_linear_scan() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let mut matched = 0;
        for round in 0..400 {
            let n = 1 + g.below(if round % 10 == 0 { 400 } else { 40 });
            let mut patterns = gen_patterns(&mut g, n);
            // Half the rounds in specificity order (repository rules), half
            // in generated order (the allowlist).
            if round % 2 == 0 {
                patterns.sort_by(Pattern::specificity_order);
            }
            let index = PatternIndex::new(&patterns);
            for _ in 0..50 {
                let name = gen_name(&mut g, &patterns);
                let linear = patterns.iter().position(|p| p.matches(&name));
                let indexed = index.first_match(&name, |i| patterns[i].matches(&name));
                assert_eq!(
                    indexed,
                    linear,
                    "round {round}: {name:?} against {:?}",
                    patterns.iter().map(Pattern::as_str).collect::<Vec<_>>()
                );
                matched += usize::from(linear.is_some());
            }
        }
        // The generator must exercise matches, not only misses.
        assert!(matched > 5_000, "only {matched} names matched");
    }

    #[test]
    fn index_edge_cases() {
        let empty = PatternIndex::new(&[]);
        assert_eq!(empty.first_match("r/a", |_| true), None);
        let patterns = [p("r/a"), p("r/a/**"), p("r/ab*"), p("**"), p("r/a*")];
        let index = PatternIndex::new(&patterns);
        let first = |name: &str| index.first_match(name, |i| patterns[i].matches(name));
        assert_eq!(first("r/a"), Some(0));
        assert_eq!(first("r/a/b"), Some(1));
        assert_eq!(first("r/abc"), Some(2));
        assert_eq!(first("r/ac"), Some(3));
        assert_eq!(first(""), Some(3));
        // Names sorting before every prefix, and between prefixes.
        let patterns = [p("m/x"), p("m/y*"), p("m/**")];
        let index = PatternIndex::new(&patterns);
        let first = |name: &str| index.first_match(name, |i| patterns[i].matches(name));
        assert_eq!(first("a"), None);
        assert_eq!(first("m/"), Some(2));
        assert_eq!(first("m/xa"), Some(2));
        assert_eq!(first("m/ya"), Some(1));
        assert_eq!(first("n"), None);
    }

    /// `Policy::rule_for` through the indexes picks what the linear scan
    /// it replaced picked: the allowlist's first match in written order,
    /// else the most specific repository rule, else the default.
    #[test]
    fn rule_for_agrees_with_a_linear_scan() {
        use crate::config::policy::PolicyDoc;
        use crate::policy::{Policy, RuleSource};
        let mut g = Gen(0x0123_4567_89ab_cdef);
        for round in 0..60 {
            let n = 1 + g.below(200);
            let rules = gen_patterns(&mut g, n);
            let n = g.below(6);
            let allowlist = gen_patterns(&mut g, n);
            let mut yaml = String::from(
                "defaultAdmissionRule: {evaluationMode: ALWAYS_DENY}\nrepositoryAdmissionRules:\n",
            );
            for (i, r) in rules.iter().enumerate() {
                let mode = ["ALWAYS_ALLOW", "ALWAYS_DENY"][i % 2];
                yaml.push_str(&format!(
                    "  \"{}\": {{evaluationMode: {mode}}}\n",
                    r.as_str()
                ));
            }
            yaml.push_str("admissionWhitelistPatterns:\n");
            for a in &allowlist {
                yaml.push_str(&format!("  - namePattern: \"{}\"\n", a.as_str()));
            }
            let doc: PolicyDoc = serde_yaml_ng::from_str(&yaml).expect("generated policy");
            let policy = Policy::compile(&doc, &[]).expect("compile");
            let linear = |name: &str| -> RuleSource {
                if let Some(a) = policy.allowlist.iter().find(|p| p.matches(name)) {
                    return RuleSource::Allowlist(a.as_str().to_owned());
                }
                policy
                    .repository_rules
                    .iter()
                    .find(|(p, _)| p.matches(name))
                    .map_or(RuleSource::Default, |(_, r)| r.source.clone())
            };
            let all: Vec<Pattern> = rules.iter().chain(&allowlist).cloned().collect();
            for _ in 0..100 {
                let name = gen_name(&mut g, &all);
                assert_eq!(
                    policy.rule_for(&name).source,
                    linear(&name),
                    "round {round}: {name:?}"
                );
            }
        }
    }

    #[test]
    fn invalid_patterns() {
        assert!(Pattern::new("").is_err());
        assert!(Pattern::new("a/***").is_err());
        assert!(Pattern::new("a/b@sha256:x").is_err());
    }

    #[test]
    fn patterns_are_put_in_canonical_form() {
        let table: &[(&str, &str)] = &[
            // Docker Hub, every spelling.
            ("docker.io/library/nginx", "docker.io/library/nginx"),
            ("docker.io/nginx", "docker.io/library/nginx"),
            ("index.docker.io/library/nginx", "docker.io/library/nginx"),
            ("index.docker.io/nginx", "docker.io/library/nginx"),
            (
                "registry-1.docker.io/library/nginx",
                "docker.io/library/nginx",
            ),
            ("registry.hub.docker.com/nginx", "docker.io/library/nginx"),
            ("Docker.io/library/nginx", "docker.io/library/nginx"),
            ("DOCKER.IO/nginx", "docker.io/library/nginx"),
            ("docker.io/bitnami/nginx", "docker.io/bitnami/nginx"),
            // Wildcards keep their meaning.
            ("docker.io/*", "docker.io/library/*"),
            ("docker.io/ngin*", "docker.io/library/ngin*"),
            ("docker.io/**", "docker.io/**"),
            ("docker.io/ngin**", "docker.io/ngin**"),
            ("docker.io/*/nginx", "docker.io/*/nginx"),
            ("index.docker.io/library/**", "docker.io/library/**"),
            // Other registries: only the host is lowercased.
            ("GHCR.io/org/app", "ghcr.io/org/app"),
            ("ghcr.io/nginx", "ghcr.io/nginx"),
            ("127.0.0.1:5001/demo/app", "127.0.0.1:5001/demo/app"),
            ("r:5001/base/*", "r:5001/base/*"),
            ("*/library/*", "*/library/*"),
            ("**", "**"),
            ("docker.io", "docker.io"),
        ];
        for (written, want) in table {
            assert_eq!(
                canonical_pattern(written).as_deref(),
                Ok(*want),
                "{written}"
            );
            // Canonical is a fixed point.
            assert_eq!(canonical_pattern(want).as_deref(), Ok(*want), "{want}");
        }
    }

    #[test]
    fn tags_digests_and_uppercase_repositories_are_refused() {
        let refused: &[(&str, &str)] = &[
            ("docker.io/library/nginx:v1", "tag (\":v1\")"),
            ("docker.io/nginx:latest", "tag"),
            ("127.0.0.1:5001/demo/app:*", "tag"),
            (
                "docker.io/library/nginx@sha256:0123",
                "digest (\"@sha256:0123\")",
            ),
            ("docker.io/library/NGINX", "lowercase"),
        ];
        for (written, why) in refused {
            let e = canonical_pattern(written).unwrap_err();
            assert!(e.contains(why), "{written}: {e}");
            assert!(
                e.contains(&format!("{written:?}")),
                "names the pattern: {e}"
            );
        }
        let e = canonical_pattern("docker.io/library/nginx:v1").unwrap_err();
        assert!(e.contains("write \"docker.io/library/nginx\""), "{e}");
    }

    #[test]
    fn unreachable_patterns_are_found() {
        let upstreams = ["docker.io", "127.0.0.1:5001"];
        for reachable in [
            "docker.io/library/nginx",
            "127.0.0.1:5001/demo/**",
            "*/library/*",
            "127.0.0.1:*/x",
            "**",
            "**/nginx",
        ] {
            assert_eq!(
                unreachable_reason(reachable, &upstreams),
                None,
                "{reachable}"
            );
        }
        for (unreachable, why) in [
            ("ghcr.io/org/app", "registry \"ghcr.io\""),
            ("dockerio/library/nginx", "not a configured upstream"),
            ("library/nginx", "registry \"library\""),
            ("docker.io", "names no repository"),
            ("*", "names no repository"),
            ("gcr.*/x", "not a configured upstream"),
        ] {
            let reason = unreachable_reason(unreachable, &upstreams)
                .unwrap_or_else(|| panic!("{unreachable} should be unreachable"));
            assert!(reason.contains(why), "{unreachable}: {reason}");
        }
    }
}
