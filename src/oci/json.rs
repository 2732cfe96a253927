//! One unambiguous reading of JSON that Portcullis and container runtimes
//! both parse.
//!
//! Go's `encoding/json`, which distribution, containerd, podman, cri-o and
//! skopeo decode manifests and configs with, matches object keys to struct
//! fields case-insensitively (Unicode simple folding: `"Config"`,
//! `"CONFIG"` and even `"\u017Fize"` for `size`) and keeps the last of
//! duplicate keys. serde matches exact keys and (for structs) rejects
//! duplicates or (for maps) keeps the last. Where the two readings can
//! differ, an attacker who controls the bytes chooses which one each side
//! sees. [`Strict`] refuses every document where they could differ: any
//! object, at any depth, holding two keys that are equal after case
//! folding. What remains reads the same either way, and [`Strict::get`]
//! looks keys up the way Go does (case-insensitively), so Portcullis sees
//! the fields a runtime will see.
//!
//! Nesting is bounded by serde_json's recursion limit (128).

use std::fmt;

use regex_syntax::hir::{ClassUnicode, ClassUnicodeRange};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value whose objects have no case-folding key collisions.
#[derive(Debug, Clone, PartialEq)]
pub enum Strict {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Strict>),
    /// Entries in document order; keys are unique after [`fold`].
    Object(Vec<(String, Strict)>),
}

/// Why bytes have no single reading.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Ambiguous {
    #[error("not valid JSON: {0}")]
    Syntax(String),
    #[error("keys {first:?} and {second:?} collide (JSON decoders disagree on which one counts)")]
    Collision { first: String, second: String },
}

/// A key as Go's decoder compares it with a struct field's name
/// (`encoding/json`'s `foldName`): ASCII letters upper-cased, and every
/// other character replaced by the smallest character of its Unicode
/// simple case folding orbit, the one `unicode.SimpleFold` cycles through.
/// So `"\u{212A}ind"` (Kelvin sign) folds like `"kind"` and `"\u{17F}ize"`
/// (long s) like `"size"`, while the dotless `ı`, the ligatures `ﬁ`/`ﬆ` and
/// `ß` (whose foldings to `I`, `FI`, `ST`, `SS` are full or Turkic
/// mappings, not simple ones) fold to themselves, as in Go: `"conﬁg"` is
/// not `config` to a runtime, so it is not to Portcullis either. The
/// tables are regex-syntax's (a newer Unicode than some Go releases'):
/// where versions differ Portcullis sees more collisions, never more
/// fields, since every orbit that holds an ASCII letter is as old as Go.
pub fn fold(key: &str) -> String {
    key.chars().map(fold_char).collect()
}

/// One character of [`fold`].
fn fold_char(c: char) -> char {
    if c.is_ascii() {
        return c.to_ascii_uppercase();
    }
    let mut orbit = ClassUnicode::new([ClassUnicodeRange::new(c, c)]);
    // Cannot fail: the unicode-case tables are compiled in (Cargo.toml).
    if orbit.try_case_fold_simple().is_err() {
        return c;
    }
    orbit.ranges().first().map_or(c, ClassUnicodeRange::start)
}

impl Strict {
    /// Parses `bytes`, refusing colliding keys anywhere in the document.
    pub fn parse(bytes: &[u8]) -> Result<Strict, Ambiguous> {
        serde_json::from_slice::<Parsed>(bytes)
            .map(|p| p.0)
            .map_err(|e| {
                let text = e.to_string();
                match text.strip_prefix(COLLISION) {
                    Some(rest) => {
                        let (first, second) = rest.split_once('\u{0}').unwrap_or((rest, ""));
                        let second = second.split(" at line").next().unwrap_or(second);
                        Ambiguous::Collision {
                            first: first.to_owned(),
                            second: second.to_owned(),
                        }
                    }
                    None => Ambiguous::Syntax(text),
                }
            })
    }

    /// The value of `key` in an object, matched case-insensitively as a
    /// Go decoder would (unambiguous: keys do not collide).
    pub fn get(&self, key: &str) -> Option<&Strict> {
        let Strict::Object(entries) = self else {
            return None;
        };
        let folded = fold(key);
        entries
            .iter()
            .find(|(k, _)| k == key || fold(k) == folded)
            .map(|(_, v)| v)
    }

    /// Whether an object has `key` (case-insensitively), whatever its
    /// value, `null` included.
    pub fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Strict::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Strict]> {
        match self {
            Strict::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Strict::Number(n) => n.as_u64(),
            _ => None,
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Strict::Object(_))
    }

    /// Absent-like for a Go decoder: `null`, `""`, `[]`, `{}` or `false`
    /// leave a field at its zero value.
    pub fn is_empty_value(&self) -> bool {
        match self {
            Strict::Null => true,
            Strict::Bool(b) => !b,
            Strict::String(s) => s.is_empty(),
            Strict::Array(a) => a.is_empty(),
            Strict::Object(o) => o.is_empty(),
            Strict::Number(_) => false,
        }
    }
}

/// Marks a collision in serde's custom error text (NUL separates the keys).
const COLLISION: &str = "portcullis-json-collision:";

struct Parsed(Strict);

impl<'de> Deserialize<'de> for Parsed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Parsed)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Strict, E> {
        serde_json::Number::from_f64(v)
            .map(Strict::Number)
            .ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut out = Vec::new();
        while let Some(Parsed(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Strict::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut entries: Vec<(String, Strict)> = Vec::new();
        let mut folded: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let f = fold(&key);
            if let Some(i) = folded.iter().position(|g| *g == f) {
                return Err(de::Error::custom(format_args!(
                    "{COLLISION}{}\u{0}{key}",
                    entries[i].0
                )));
            }
            let Parsed(value) = map.next_value()?;
            folded.push(f);
            entries.push((key, value));
        }
        Ok(Strict::Object(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_documents_parse_and_keys_are_found_as_go_finds_them() {
        let v = Strict::parse(
            br#"{"Config":{"Entrypoint":["/x"]},"os":"linux","n":[1,2.5,null,true]}"#,
        )
        .expect("parses");
        assert!(v.get("config").and_then(|c| c.get("entrypoint")).is_some());
        assert_eq!(v.get("OS").and_then(Strict::as_str), Some("linux"));
        assert!(v.get("missing").is_none());
    }

    #[test]
    fn duplicates_and_case_variants_are_refused_at_any_depth() {
        for doc in [
            &br#"{"os":"","os":"linux"}"#[..],
            br#"{"os":"","OS":"linux"}"#,
            br#"{"config":{"Entrypoint":null,"entrypoint":["/bin/sh"]}}"#,
            br#"{"a":[{"b":{"size":1,"SIZE":2}}]}"#,
            // Go folds the Kelvin sign to k and the long s to s.
            "{\"kind\":1,\"\u{212A}ind\":2}".as_bytes(),
            "{\"size\":1,\"\u{17F}ize\":2}".as_bytes(),
        ] {
            match Strict::parse(doc) {
                Err(Ambiguous::Collision { .. }) => {}
                other => panic!("{}: {other:?}", String::from_utf8_lossy(doc)),
            }
        }
    }

    #[test]
    fn keys_fold_exactly_as_go_folds_them() {
        // Go's foldName: ASCII upper-cased; beyond ASCII, the smallest
        // character of the simple folding orbit.
        for (key, folded) in [
            ("mediaType", "MEDIATYPE"),
            ("\u{212A}ind", "KIND"),
            ("\u{17F}ize", "SIZE"),
            ("\u{1E9E}", "\u{DF}"),
            ("\u{DF}", "\u{DF}"),
            ("\u{3C2}\u{3A3}\u{3C3}", "\u{3A3}\u{3A3}\u{3A3}"),
            ("\u{B5}", "\u{B5}"),
            ("\u{3BC}", "\u{B5}"),
            ("\u{131}", "\u{131}"),
            ("\u{130}", "\u{130}"),
            ("con\u{FB01}g", "CON\u{FB01}G"),
            // One orbit since Unicode 15.1 (Go's tables may be older: then
            // Portcullis folds more, which can only refuse more).
            ("manife\u{FB06}s", "MANIFE\u{FB05}S"),
            ("\u{10428}", "\u{10400}"),
        ] {
            assert_eq!(fold(key), folded, "{key:?}");
        }
    }

    #[test]
    fn keys_go_does_not_fold_together_are_neither_collisions_nor_fields() {
        // Full-mapping and Turkic look-alikes are other keys to Go: no
        // collision, and never read as the field they resemble.
        for (doc, field) in [
            ("{\"config\":1,\"con\u{FB01}g\":2}", "config"),
            ("{\"manifests\":1,\"manife\u{FB05}s\":2}", "manifests"),
            ("{\"digest\":1,\"dige\u{FB06}\":2}", "digest"),
            ("{\"config\":1,\"conf\u{131}g\":2}", "config"),
            ("{\"class\":1,\"cla\u{DF}\":2}", "class"),
        ] {
            let v = Strict::parse(doc.as_bytes()).expect(doc);
            assert_eq!(v.get(field).and_then(Strict::as_u64), Some(1), "{doc}");
        }
        for (doc, field) in [
            ("{\"con\u{FB01}g\":2}", "config"),
            ("{\"manife\u{FB06}s\":2}", "manifests"),
            ("{\"conf\u{131}g\":2}", "config"),
        ] {
            let v = Strict::parse(doc.as_bytes()).expect(doc);
            assert!(v.get(field).is_none(), "{doc}: read as {field}");
        }
        // ẞ and ß are one orbit, as for Go.
        assert!(matches!(
            Strict::parse("{\"\u{DF}\":1,\"\u{1E9E}\":2}".as_bytes()),
            Err(Ambiguous::Collision { .. })
        ));
    }

    #[test]
    fn the_collision_names_both_keys() {
        let err = Strict::parse(br#"{"layers":[],"Layers":[]}"#).expect_err("collides");
        assert_eq!(
            err,
            Ambiguous::Collision {
                first: "layers".into(),
                second: "Layers".into()
            }
        );
    }

    #[test]
    fn syntax_errors_are_not_collisions() {
        assert!(matches!(Strict::parse(b"{"), Err(Ambiguous::Syntax(_))));
        assert!(matches!(Strict::parse(b"[1,]"), Err(Ambiguous::Syntax(_))));
    }
}
