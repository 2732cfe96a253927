//! Durations as the configuration writes them: `500ms`, `10s`, `2m`, `1h`.
//! The one parser of such text in Portcullis; every section's serde
//! helpers use it.
//!
//! May use: std and serde only. Must never use: anything in the crate.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses `250ms`, `10s`, `5m`, `1h`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 500ms, 10s, 5m, 1h"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!(
            "invalid duration {text:?}: unit must be ms, s, m or h"
        )),
    }
}

/// `#[serde(deserialize_with = "duration::deserialize")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(serde::de::Error::custom)
}

/// `#[serde(default, deserialize_with = "duration::deserialize_optional")]`:
/// a key that, when present, holds a duration.
pub fn deserialize_optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    deserialize(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse("10").is_err());
        assert!(parse("s").is_err());
        assert!(parse("1d").is_err());
    }
}
