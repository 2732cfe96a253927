//! Differential: the manifest Portcullis reads against the manifest a Go
//! runtime would read from the same bytes. The model is Go's
//! `encoding/json` decoding into structs whose field names are ASCII: an
//! object key matches a field when it equals it ignoring ASCII case, with
//! the Kelvin sign `K` standing for `k` and the long s `ſ` for `s` (the only
//! characters beyond ASCII whose simple case folding orbit holds an ASCII
//! letter, so the only ones Go's `foldName` matches to an ASCII name);
//! when several keys match one field the last one wins. It is written
//! independently of `oci::json::fold`.
//!
//! Whenever [`portcullis::oci::manifest::read`] accepts a document, the
//! config, layers, children and subject must be the same for both, in
//! both directions: every one the Go model reads Portcullis read with the
//! same digest, in the same order (else a runtime would run what
//! Portcullis never checked), and every one Portcullis read the Go model
//! reads too (else Portcullis would admit on a field a runtime ignores).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::oci::manifest::{self, Descriptor, Kind};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value that keeps every object entry, duplicates included.
enum Go {
    Scalar,
    Str(String),
    Arr(Vec<Go>),
    Obj(Vec<(String, Go)>),
}

impl Go {
    /// The value Go's decoder stores in the struct field `name`.
    fn field(&self, name: &str) -> Option<&Go> {
        let Go::Obj(entries) = self else {
            return None;
        };
        entries
            .iter()
            .rev()
            .find(|(k, _)| go_equal_fold(k, name))
            .map(|(_, v)| v)
    }

    fn str(&self) -> Option<&str> {
        match self {
            Go::Str(s) => Some(s),
            _ => None,
        }
    }

    fn digest(&self) -> Option<&str> {
        self.field("digest").and_then(Go::str)
    }

    fn array(&self) -> &[Go] {
        match self {
            Go::Arr(items) => items,
            _ => &[],
        }
    }
}

/// Whether Go's decoder matches `key` to the ASCII field name `field`.
fn go_equal_fold(key: &str, field: &str) -> bool {
    let mut key = key.chars();
    for f in field.chars() {
        let Some(k) = key.next() else {
            return false;
        };
        let same = k.eq_ignore_ascii_case(&f)
            || (k == '\u{212A}' && f.eq_ignore_ascii_case(&'k'))
            || (k == '\u{17F}' && f.eq_ignore_ascii_case(&'s'));
        if !same {
            return false;
        }
    }
    key.next().is_none()
}

struct GoVisitor;

impl<'de> Visitor<'de> for GoVisitor {
    type Value = Go;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Go, E> {
        Ok(Go::Scalar)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Go, E> {
        Ok(Go::Scalar)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Go, E> {
        Ok(Go::Scalar)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Go, E> {
        Ok(Go::Scalar)
    }
    fn visit_str<E>(self, v: &str) -> Result<Go, E> {
        Ok(Go::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Go, E> {
        Ok(Go::Str(v))
    }
    fn visit_unit<E>(self) -> Result<Go, E> {
        Ok(Go::Scalar)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Go, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Go::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Go, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Go>()? {
            entries.push((k, v));
        }
        Ok(Go::Obj(entries))
    }
}

impl<'de> Deserialize<'de> for Go {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Go, D::Error> {
        d.deserialize_any(GoVisitor)
    }
}

fn same(ours: &Descriptor, theirs: &Go, at: &str) {
    assert_eq!(
        Some(ours.digest.to_string().as_str()),
        theirs.digest(),
        "{at}: Portcullis and the Go model read different digests"
    );
}

/// The descriptor both read, or neither (a JSON `null` is no descriptor
/// to Go either).
fn one(ours: Option<&Descriptor>, theirs: Option<&Go>, at: &str) {
    match (ours, theirs) {
        (Some(o), Some(t)) => same(o, t, at),
        (None, Some(t)) => assert!(
            matches!(t, Go::Scalar),
            "{at}: the Go model reads a descriptor Portcullis did not"
        ),
        (Some(o), None) => panic!(
            "{at}: Portcullis read {} where the Go model reads nothing",
            o.digest
        ),
        (None, None) => {}
    }
}

/// The same list for both (absent reads as empty, as in Go).
fn list(ours: &[Descriptor], theirs: Option<&Go>, at: &str) {
    let theirs = theirs.map_or(&[][..], Go::array);
    assert_eq!(ours.len(), theirs.len(), "{at}: different lengths");
    for (o, t) in ours.iter().zip(theirs) {
        same(o, t, at);
    }
}

const CONTENT_TYPES: &[&str] = &[
    "",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let content_type = CONTENT_TYPES[usize::from(pick) % CONTENT_TYPES.len()];
    let Ok(reading) = manifest::read(bytes, content_type) else {
        return;
    };
    let go: Go = serde_json::from_slice(bytes).expect("Portcullis read JSON Go-style JSON refuses");
    match reading.kind {
        Kind::Image => {
            one(reading.config.as_ref(), go.field("config"), "config");
            list(&reading.layers, go.field("layers"), "layers");
            assert!(
                go.field("manifests").is_none(),
                "an image manifest with manifests for Go"
            );
        }
        Kind::Index => {
            list(&reading.children, go.field("manifests"), "manifests");
            assert!(
                go.field("layers").is_none() && go.field("config").is_none(),
                "an index with layers or config for Go"
            );
        }
        Kind::Schema1 => {}
    }
    one(reading.subject.as_ref(), go.field("subject"), "subject");
});
