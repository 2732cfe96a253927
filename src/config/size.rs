//! Sizes as the configuration writes them: `50GiB`, `512MiB`, `64KB`, or a
//! plain number of bytes. The one parser of such text in Portcullis.
//!
//! May use: std and serde only. Must never use: anything in the crate.

use serde::{Deserialize, Deserializer};

/// Parses `1024`, `64KiB`, `512MiB`, `50GiB`, `1TiB` (binary units) and
/// `64KB`, `500MB`, `50GB`, `1TB` (decimal units); `B` is bytes.
pub fn parse(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid =
        || format!("invalid size {text:?}: expected e.g. 50GiB, 512MiB or a number of bytes");
    let n: u64 = number.parse().map_err(|_| invalid())?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1000 * 1000,
        "MiB" => 1 << 20,
        "GB" => 1000 * 1000 * 1000,
        "GiB" => 1 << 30,
        "TB" => 1000 * 1000 * 1000 * 1000,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size {text:?}: unit {other:?} is not one of B, KB, KiB, MB, MiB, GB, GiB, TB, TiB"
            ))
        }
    };
    n.checked_mul(scale).ok_or_else(invalid)
}

/// `#[serde(deserialize_with = "size::deserialize")]`: a size written as
/// text with a unit, or as a plain integer of bytes.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(n) => Ok(n),
        Raw::Text(text) => parse(&text).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("1024"), Ok(1024));
        assert_eq!(parse("10B"), Ok(10));
        assert_eq!(parse("64KiB"), Ok(65536));
        assert_eq!(parse("64KB"), Ok(64_000));
        assert_eq!(parse("512MiB"), Ok(512 << 20));
        assert_eq!(parse("50GiB"), Ok(50 << 30));
        assert_eq!(parse("50GB"), Ok(50_000_000_000));
        assert_eq!(parse("1TiB"), Ok(1 << 40));
        for bad in [
            "",
            "GiB",
            "1.5GiB",
            "10 gib",
            "-1",
            "99999999999TiB",
            "1PiB",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
