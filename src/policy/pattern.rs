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

use std::cmp::Ordering;

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

    fn literal_prefix_len(&self) -> usize {
        match self.tokens.first() {
            Some(Token::Literal(l)) => l.len(),
            _ => 0,
        }
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
            (0..=segment_end).any(|i| match_tokens(rest, &name[i..]))
        }
        Some((Token::Any, rest)) => (0..=name.len())
            .filter(|&i| name.is_char_boundary(i))
            .any(|i| match_tokens(rest, &name[i..])),
    }
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

    #[test]
    fn invalid_patterns() {
        assert!(Pattern::new("").is_err());
        assert!(Pattern::new("a/***").is_err());
        assert!(Pattern::new("a/b@sha256:x").is_err());
    }
}
