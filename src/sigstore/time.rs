//! Instants as verification compares them: milliseconds since the Unix
//! epoch, from RFC 3339 text (trusted roots) and X.509 times.

use spki::der::DateTime;

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction]Z` (UTC only, as trusted roots
/// write it) into milliseconds since the epoch.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let bad = || format!("{text:?} is not an RFC 3339 UTC time (YYYY-MM-DDTHH:MM:SS[.fff]Z)");
    let body = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix('z'))
        .ok_or_else(bad)?;
    let (whole, fraction) = match body.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (body, None),
    };
    let b = whole.as_bytes();
    if b.len() != 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<u16, String> {
        let part = &whole[range];
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<u16>().map_err(|_| bad())
    };
    let year = num(0..4)?;
    let (month, day) = (num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let to_u8 = |v: u16| u8::try_from(v).map_err(|_| bad());
    let at = DateTime::new(
        year,
        to_u8(month)?,
        to_u8(day)?,
        to_u8(hour)?,
        to_u8(minute)?,
        to_u8(second)?,
    )
    .map_err(|_| bad())?;
    let mut ms = i64::try_from(at.unix_duration().as_secs()).map_err(|_| bad())? * 1000;
    if let Some(fraction) = fraction {
        if fraction.is_empty() || !fraction.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        // Milliseconds: the first three digits, right-padded.
        let digits: String = fraction.chars().chain("000".chars()).take(3).collect();
        ms += digits.parse::<i64>().map_err(|_| bad())?;
    }
    Ok(ms)
}

/// An X.509 time in milliseconds since the epoch.
pub fn x509_ms(time: &x509_cert::time::Time) -> i64 {
    i64::try_from(time.to_unix_duration().as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_instants() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_rfc3339_ms("2022-12-31T23:59:59.999Z"),
            Ok(1_672_531_199_999)
        );
        assert_eq!(
            parse_rfc3339_ms("2021-03-07T03:20:29Z"),
            Ok(1_615_087_229_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2021-03-07T03:20:29.5Z"),
            Ok(1_615_087_229_500)
        );
        for bad in [
            "2021-03-07 03:20:29Z",
            "2021-03-07T03:20:29",
            "2021-03-07T03:20:29+01:00",
            "2021-13-07T03:20:29Z",
            "2021-03-07T03:20:29.Z",
            "+021-03-07T03:20:29Z",
        ] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad}");
        }
    }
}
