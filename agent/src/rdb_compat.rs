//! Which server can load which RDB format.
//!
//! A server refuses to load an RDB newer than the formats it knows, and Valkey's own
//! format (`VALKEY` + 3 digits, Valkey 9 and later) is unknown to every Redis and to
//! Valkey 8. A restore must find that out before it touches anything, and `verify` with
//! `load` must pick a scratch server that can load the backup. The table, checked against
//! the real servers in the integration tests where they are installed:
//!
//! | server              | loads                          |
//! |---------------------|--------------------------------|
//! | Redis 6.x           | `REDIS` ≤ 9                    |
//! | Redis 7.0           | `REDIS` ≤ 10                   |
//! | Redis 7.2           | `REDIS` ≤ 11                   |
//! | Redis 7.4 and later | `REDIS` ≤ 12                   |
//! | Valkey 7.2, 8.x     | `REDIS` ≤ 11                   |
//! | Valkey 9.x and later| `REDIS` ≤ 11, `VALKEY` ≤ 80    |
//!
//! Unknown servers (no version) are assumed to load nothing newer than `REDIS0009`, so a
//! check errs on the side of refusing.

use crate::rdb::RdbFormat;

/// A server family and version, as `INFO` or `--version` report them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerVersion {
    /// `valkey` or `redis`.
    pub kind: String,
    /// `major.minor.patch`.
    pub version: String,
}

impl ServerVersion {
    fn major_minor(&self) -> (u32, u32) {
        let mut it = self
            .version
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    }

    /// The newest `REDIS` RDB version this server loads.
    pub fn max_redis_rdb(&self) -> u16 {
        let (major, minor) = self.major_minor();
        match (self.kind.as_str(), major, minor) {
            ("valkey", 7.., _) => 11,
            ("redis", 8.., _) => 12,
            ("redis", 7, 4..) => 12,
            ("redis", 7, 2..) => 11,
            ("redis", 7, _) => 10,
            _ => 9,
        }
    }

    /// The newest `VALKEY` RDB version this server loads (`None`: it loads none).
    pub fn max_valkey_rdb(&self) -> Option<u16> {
        let (major, _) = self.major_minor();
        (self.kind == "valkey" && major >= 9).then_some(80)
    }

    /// Whether this server can load a snapshot of `format`.
    pub fn can_load(&self, format: &RdbFormat) -> bool {
        match format.magic {
            "VALKEY" => self
                .max_valkey_rdb()
                .is_some_and(|max| format.version <= max),
            _ => format.version <= self.max_redis_rdb(),
        }
    }

    /// "Valkey 9.1.2" / "Redis 7.0.15", for messages.
    pub fn display_name(&self) -> String {
        let kind = if self.kind == "valkey" {
            "Valkey"
        } else {
            "Redis"
        };
        format!("{kind} {}", self.version)
    }

    /// What this server loads, for messages ("RDB up to REDIS0011 and VALKEY080").
    pub fn loads(&self) -> String {
        let redis = format!("REDIS{:04}", self.max_redis_rdb());
        match self.max_valkey_rdb() {
            Some(v) => format!("RDB up to {redis} and VALKEY{v:03}"),
            None => format!("RDB up to {redis}"),
        }
    }

    /// Parses the first line of `valkey-server --version` / `redis-server --version`
    /// (`Valkey server v=9.1.2 sha=…`, `Redis server v=7.0.15 sha=…`).
    pub fn from_version_output(text: &str) -> Option<Self> {
        let line = text.lines().next()?;
        let kind = if line.starts_with("Valkey server") {
            "valkey"
        } else if line.starts_with("Redis server") {
            "redis"
        } else {
            return None;
        };
        let version = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("v="))?
            .to_owned();
        Some(ServerVersion {
            kind: kind.into(),
            version,
        })
    }
}

/// `REDIS0011` / `VALKEY080`, as the header spells it.
pub fn format_name(format: &RdbFormat) -> String {
    match format.magic {
        "VALKEY" => format!("VALKEY{:03}", format.version),
        m => format!("{m}{:04}", format.version),
    }
}

/// The format a manifest records (`rdb-magic`, `rdb-version`).
pub fn manifest_format(magic: &str, version: u16) -> RdbFormat {
    RdbFormat {
        magic: if magic == "VALKEY" { "VALKEY" } else { "REDIS" },
        version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(kind: &str, version: &str) -> ServerVersion {
        ServerVersion {
            kind: kind.into(),
            version: version.into(),
        }
    }

    const R10: RdbFormat = RdbFormat {
        magic: "REDIS",
        version: 10,
    };
    const R11: RdbFormat = RdbFormat {
        magic: "REDIS",
        version: 11,
    };
    const V80: RdbFormat = RdbFormat {
        magic: "VALKEY",
        version: 80,
    };

    #[test]
    fn the_version_table_holds() {
        let cases = [
            (server("redis", "7.0.15"), [true, false, false]),
            (server("redis", "7.2.4"), [true, true, false]),
            (server("valkey", "8.1.8"), [true, true, false]),
            (server("valkey", "9.1.2"), [true, true, true]),
            (server("valkey", "10.0.0"), [true, true, true]),
            (server("redis", ""), [false, false, false]),
        ];
        for (s, expected) in cases {
            let got = [R10, R11, V80].map(|f| s.can_load(&f));
            assert_eq!(got, expected, "{s:?}");
        }
        assert_eq!(
            server("valkey", "9.0.0").loads(),
            "RDB up to REDIS0011 and VALKEY080"
        );
        assert_eq!(format_name(&V80), "VALKEY080");
        assert_eq!(format_name(&R11), "REDIS0011");
    }

    #[test]
    fn version_output_of_both_families_parses() {
        assert_eq!(
            ServerVersion::from_version_output(
                "Valkey server v=9.1.2 sha=00000000:1 malloc=libc bits=64 build=1536df31c0395150\n"
            ),
            Some(server("valkey", "9.1.2"))
        );
        assert_eq!(
            ServerVersion::from_version_output(
                "Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc"
            ),
            Some(server("redis", "7.0.15"))
        );
        assert_eq!(
            ServerVersion::from_version_output("bash: no such file"),
            None
        );
    }
}
