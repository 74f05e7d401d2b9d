//! Every way the agent writes a time, in one place.
//!
//! Records, results and messages use RFC 3339 in UTC with second precision
//! (`2026-11-21T19:30:00Z`); object names use the compact, sortable form
//! (`20261121T193000Z`), the same one backup ids start with. Pure: no clock is read here.

use time::{OffsetDateTime, UtcOffset};

/// RFC 3339 UTC time, second precision, as used in every record and result.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// RFC 3339 for Unix seconds (`None` when out of range).
pub fn rfc3339_unix(secs: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(secs).ok().map(rfc3339)
}

/// `YYYYMMDDTHHMMSSZ` in UTC: sorts as text in time order, safe in object keys.
pub fn compact(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn formats_in_utc_to_the_second() {
        let t = datetime!(2026-11-21 20:30:00.75 +01:00);
        assert_eq!(rfc3339(t), "2026-11-21T19:30:00Z");
        assert_eq!(compact(t), "20261121T193000Z");
        assert_eq!(rfc3339_unix(0).as_deref(), Some("1970-01-01T00:00:00Z"));
    }
}
