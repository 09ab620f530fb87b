//! Small value types of the domain: names, WAL positions, timelines, monotonic time.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A member's name (Patroni `name`): unique within a cluster, used as the leader key value,
/// the member key suffix, `application_name` on the replication connection and (normalised)
/// the replication slot name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberName(String);

impl MemberName {
    /// Any non-empty string is a valid member name; Patroni places no other restriction
    /// except the reserved strict-sync placeholder, which the configuration layer rejects.
    pub fn new(name: impl Into<String>) -> Option<MemberName> {
        let name = name.into();
        if name.is_empty() {
            None
        } else {
            Some(MemberName(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Patroni's `slot_name_from_member_name`: lowercase, `-` and `.` become `_`, other
    /// characters outside `[a-z0-9_]` become `u%04x`-style code points, at most 63 bytes.
    pub fn slot_name(&self) -> String {
        let mut out = String::new();
        for c in self.0.chars() {
            let c = c.to_ascii_lowercase();
            match c {
                'a'..='z' | '0'..='9' | '_' => out.push(c),
                '-' | '.' => out.push('_'),
                other => out.push_str(&format!("u{:04}", other as u32)),
            }
        }
        out.truncate(63);
        out
    }
}

impl fmt::Display for MemberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for MemberName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// A WAL position (PostgreSQL `pg_lsn`), as a byte offset.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Bytes from `other` up to `self`, zero when `other` is ahead.
    pub fn saturating_sub(self, other: Lsn) -> u64 {
        self.0.saturating_sub(other.0)
    }
}

/// `X/X` in upper-case hex, as PostgreSQL and `patronictl list` print it.
impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseLsnError(pub String);

impl fmt::Display for ParseLsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid LSN {:?}: expected X/X in hex", self.0)
    }
}

impl std::error::Error for ParseLsnError {}

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Lsn, ParseLsnError> {
        let err = || ParseLsnError(s.to_owned());
        let (hi, lo) = s.trim().split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

/// A PostgreSQL timeline ID.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Timeline(pub u32);

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A point on the agent's monotonic clock (milliseconds since an arbitrary origin; the real
/// clock counts suspended time, `CLOCK_BOOTTIME`). Only differences are meaningful.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Mono(pub u64);

impl Mono {
    pub fn from_millis(ms: u64) -> Mono {
        Mono(ms)
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    pub fn saturating_since(self, earlier: Mono) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    pub fn saturating_sub(self, d: Duration) -> Mono {
        Mono(self.0.saturating_sub(millis(d)))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl std::ops::Add<Duration> for Mono {
    type Output = Mono;
    fn add(self, d: Duration) -> Mono {
        Mono(self.0.saturating_add(millis(d)))
    }
}

impl fmt::Display for Mono {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}

/// The source of time for everything that reasons about deadlines. The real implementation
/// lives in `baton-agent`; tests and the simulator drive a virtual one.
pub trait Clock: Send + Sync + 'static {
    /// Monotonic time: every deadline that matters for safety.
    fn now(&self) -> Mono;
    /// Wall-clock milliseconds since the Unix epoch: timestamps people read (history lines,
    /// `dcs_last_seen`) and scheduled switchovers only; never a safety deadline.
    fn unix_ms(&self) -> i64;
}
