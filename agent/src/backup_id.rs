//! Backup identifiers.
//!
//! An id is `YYYYMMDDTHHMMSSZ-<unit>-<6 hex>`, e.g. `20261121T193000Z-valkey-0-1a2b3c`:
//! it sorts by start time as a plain string (so S3 listings come back in time order),
//! names the unit that made it (two units starting in the same second cannot collide),
//! and ends in random hex (the same unit starting twice in one second cannot either).
//! Ids arrive as user input in restore/verify requests and as S3 keys in listings, so
//! [`BackupId::parse`] accepts exactly this grammar and nothing else — no `/`, no `..`.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

const STAMP_LEN: usize = 16; // YYYYMMDDTHHMMSSZ
const RAND_LEN: usize = 6;
const MAX_UNIT_SLUG: usize = 64;

/// A validated backup id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupId(String);

/// Why a string is not a backup id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid backup id: {0}")]
pub struct InvalidBackupId(&'static str);

impl BackupId {
    /// A new id for a backup of `unit` (a Juju unit name such as `valkey/0`) started at `now`.
    pub fn generate(now: OffsetDateTime, unit: &str) -> Result<Self, InvalidBackupId> {
        let slug = unit_slug(unit)?;
        let suffix: u32 = rand::rng().random_range(0..0x0100_0000);
        let id = format!("{}-{slug}-{suffix:06x}", crate::timefmt::compact(now));
        Self::parse(&id)
    }

    /// Parses and validates an id.
    pub fn parse(s: &str) -> Result<Self, InvalidBackupId> {
        if !s.is_ascii() || s.len() < STAMP_LEN + 1 + 1 + 1 + RAND_LEN {
            return Err(InvalidBackupId("too short or not ASCII"));
        }
        parse_stamp(&s[..STAMP_LEN])?;
        let rest = &s[STAMP_LEN..];
        let rest = rest
            .strip_prefix('-')
            .ok_or(InvalidBackupId("expected '-' after the timestamp"))?;
        let (slug, rand) = rest
            .rsplit_once('-')
            .ok_or(InvalidBackupId("missing random suffix"))?;
        if rand.len() != RAND_LEN
            || !rand
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(InvalidBackupId("suffix must be 6 lowercase hex digits"));
        }
        check_slug(slug)?;
        Ok(BackupId(s.to_owned()))
    }

    /// The id as a string (it is also a path segment in the object layout).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The start time encoded in the id.
    pub fn started_at(&self) -> OffsetDateTime {
        // Validated in parse, so this cannot fail.
        parse_stamp(&self.0[..STAMP_LEN]).expect("validated stamp")
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for BackupId {
    type Err = InvalidBackupId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `valkey/0` → `valkey-0`: the unit name made safe for a key segment.
fn unit_slug(unit: &str) -> Result<String, InvalidBackupId> {
    let slug: String = unit
        .chars()
        .map(|c| {
            if c == '/' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    check_slug(&slug)?;
    Ok(slug)
}

fn check_slug(slug: &str) -> Result<(), InvalidBackupId> {
    if slug.is_empty() || slug.len() > MAX_UNIT_SLUG {
        return Err(InvalidBackupId("unit part must be 1 to 64 characters"));
    }
    if !slug
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(InvalidBackupId("unit part may hold only a-z, 0-9 and '-'"));
    }
    if slug.starts_with('-') || slug.ends_with('-') {
        return Err(InvalidBackupId("unit part may not start or end with '-'"));
    }
    Ok(())
}

fn parse_stamp(s: &str) -> Result<OffsetDateTime, InvalidBackupId> {
    const BAD: InvalidBackupId = InvalidBackupId("timestamp must be YYYYMMDDTHHMMSSZ");
    let b = s.as_bytes();
    if b.len() != STAMP_LEN || b[8] != b'T' || b[15] != b'Z' {
        return Err(BAD);
    }
    let digits = |r: std::ops::Range<usize>| -> Result<u32, InvalidBackupId> {
        let part = &s[r];
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(BAD);
        }
        part.parse().map_err(|_| BAD)
    };
    let year = digits(0..4)? as i32;
    let month = Month::try_from(digits(4..6)? as u8).map_err(|_| BAD)?;
    let date = Date::from_calendar_date(year, month, digits(6..8)? as u8).map_err(|_| BAD)?;
    let time = Time::from_hms(
        digits(9..11)? as u8,
        digits(11..13)? as u8,
        digits(13..15)? as u8,
    )
    .map_err(|_| BAD)?;
    Ok(PrimitiveDateTime::new(date, time).assume_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn generated_ids_parse_and_carry_their_start_time() {
        let t = datetime!(2026-11-21 19:30:05 UTC);
        let id = BackupId::generate(t, "valkey/0").unwrap();
        assert!(
            id.as_str().starts_with("20261121T193005Z-valkey-0-"),
            "{id}"
        );
        assert_eq!(BackupId::parse(id.as_str()).unwrap(), id);
        assert_eq!(id.started_at(), t);
    }

    #[test]
    fn ids_from_two_units_in_the_same_second_differ() {
        let t = datetime!(2026-11-21 19:30:05 UTC);
        let a = BackupId::generate(t, "valkey/0").unwrap();
        let b = BackupId::generate(t, "valkey/1").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn ids_sort_by_time() {
        let a = BackupId::generate(datetime!(2026-11-21 19:30:05 UTC), "zz/9").unwrap();
        let b = BackupId::generate(datetime!(2026-11-21 19:30:06 UTC), "aa/0").unwrap();
        assert!(a < b);
    }

    #[test]
    fn malformed_ids_are_rejected() {
        for bad in [
            "",
            "20261121T193005Z",
            "20261121T193005Z-valkey-0",
            "20261121T193005Z-valkey-0-1a2b3",
            "20261121T193005Z-valkey-0-1A2B3C",
            "20261321T193005Z-valkey-0-1a2b3c",
            "20261121T253005Z-valkey-0-1a2b3c",
            "20261121T193005Z-../x-1a2b3c",
            "20261121T193005Z-val/key-1a2b3c",
            "20261121T193005Z--1a2b3c",
            "20261121T193005Z-Valkey-1a2b3c",
            "20261121X193005Z-valkey-0-1a2b3c",
            "2026112aT193005Z-valkey-0-1a2b3c",
            "20261121T193005Z-valkey-0-1a2b3c/",
            "20261121T193005Z-vålkey-0-1a2b3c",
        ] {
            assert!(BackupId::parse(bad).is_err(), "accepted {bad:?}");
        }
        assert!(BackupId::parse("20261121T193005Z-valkey-0-1a2b3c").is_ok());
    }

    #[test]
    fn unit_names_that_cannot_form_an_id_are_refused() {
        let t = datetime!(2026-11-21 19:30:05 UTC);
        assert!(BackupId::generate(t, "").is_err());
        assert!(BackupId::generate(t, "val key/0").is_err());
        assert!(BackupId::generate(t, &"a".repeat(65)).is_err());
    }
}
