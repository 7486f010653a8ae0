//! `TIERED_STORAGE_POLICY`: where a volume's shards are born, when they are
//! promoted to the hot tier and demoted from it, and when they split or merge.
//!
//! Contract: a [`TierPolicy`] is plain data, validated by [`TierPolicy::validate`],
//! stored with the volume (JSON in the metadata log) and parsed from the CLI
//! syntax `key=value,...` (see [`TierPolicy::parse`]). Tier 0 is the hot tier;
//! higher indices are colder. The decisions themselves are pure functions
//! ([`TierPolicy::promotion_wanted`], ...), so the manager thread holds no policy
//! logic of its own.

use crate::constants::{
    HOT_WATERMARK_HIGH_PERCENT, HOT_WATERMARK_LOW_PERCENT, PROMOTE_READS_DEFAULT, TIERS_MAX,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("policy: unknown key '{0}' (keys: write, pin, promote, high, low, split, merge)")]
    UnknownKey(String),
    #[error("policy: bad value '{value}' for '{key}': {why}")]
    BadValue {
        key: String,
        value: String,
        why: &'static str,
    },
    #[error("policy: low watermark {low}% must be below high watermark {high}% (at most 100%)")]
    Watermarks { low: u8, high: u8 },
    #[error("policy: tier {0} does not exist in this pool (tiers: {1})")]
    NoSuchTier(usize, usize),
}

/// The per-volume tier policy. Defaults: write to tier 0 (hot), promote a
/// shard read `PROMOTE_READS_DEFAULT` times in a policy window, demote above
/// `HOT_WATERMARK_HIGH_PERCENT` until below `HOT_WATERMARK_LOW_PERCENT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierPolicy {
    /// Tier on which a first write maps a shard (falls to colder tiers when full).
    pub write_tier: usize,
    /// Keep every shard on this tier: no promotion, no demotion.
    pub pin_tier: Option<usize>,
    /// Reads within one window that promote a shard to tier 0; 0 disables promotion.
    pub promote_reads: u32,
    /// Hot tier fill (percent) above which demotion starts and promotion stops.
    pub hot_high_percent: u8,
    /// Hot tier fill (percent) demotion brings it down to.
    pub hot_low_percent: u8,
    /// Split a shard whose accesses touched at most this many sixteenths of it
    /// in a window, when it is on the hot tier under pressure; 0 disables.
    pub split_max_touched_sixteenths: u8,
    /// Merge a split slot back when its children are contiguous on one tier.
    pub merge: bool,
}

impl Default for TierPolicy {
    fn default() -> Self {
        TierPolicy {
            write_tier: 0,
            pin_tier: None,
            promote_reads: PROMOTE_READS_DEFAULT,
            hot_high_percent: HOT_WATERMARK_HIGH_PERCENT,
            hot_low_percent: HOT_WATERMARK_LOW_PERCENT,
            split_max_touched_sixteenths: 4,
            merge: true,
        }
    }
}

/// Tier names accepted in policies: `hot` = 0, `cold` = 1, or a number.
fn parse_tier(key: &str, v: &str) -> Result<usize, PolicyError> {
    match v {
        "hot" => Ok(0),
        "cold" => Ok(1),
        _ => v
            .parse::<usize>()
            .ok()
            .filter(|&t| t < TIERS_MAX)
            .ok_or(PolicyError::BadValue {
                key: key.into(),
                value: v.into(),
                why: "expected hot, cold or a tier number",
            }),
    }
}

fn parse_num<T: std::str::FromStr>(
    key: &str,
    v: &str,
    why: &'static str,
) -> Result<T, PolicyError> {
    v.parse().map_err(|_| PolicyError::BadValue {
        key: key.into(),
        value: v.into(),
        why,
    })
}

impl TierPolicy {
    /// Parse `write=hot,promote=4,high=90,low=75,split=4,merge=on,pin=cold`
    /// on top of the defaults. An empty string is the default policy.
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        let mut p = TierPolicy::default();
        for kv in s.split(',').map(str::trim).filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or(PolicyError::BadValue {
                key: kv.into(),
                value: String::new(),
                why: "expected key=value",
            })?;
            match k {
                "write" => p.write_tier = parse_tier(k, v)?,
                "pin" => {
                    p.pin_tier = if v == "none" {
                        None
                    } else {
                        Some(parse_tier(k, v)?)
                    }
                }
                "promote" => p.promote_reads = parse_num(k, v, "expected a read count (0 = off)")?,
                "high" => p.hot_high_percent = parse_num(k, v, "expected a percentage")?,
                "low" => p.hot_low_percent = parse_num(k, v, "expected a percentage")?,
                "split" => {
                    p.split_max_touched_sixteenths =
                        parse_num(k, v, "expected sixteenths 0..=15 (0 = off)")?;
                    if p.split_max_touched_sixteenths > 15 {
                        return Err(PolicyError::BadValue {
                            key: k.into(),
                            value: v.into(),
                            why: "expected 0..=15",
                        });
                    }
                }
                "merge" => {
                    p.merge = match v {
                        "on" | "true" | "1" => true,
                        "off" | "false" | "0" => false,
                        _ => {
                            return Err(PolicyError::BadValue {
                                key: k.into(),
                                value: v.into(),
                                why: "expected on or off",
                            })
                        }
                    }
                }
                _ => return Err(PolicyError::UnknownKey(k.into())),
            }
        }
        p.validate_shape()?;
        Ok(p)
    }

    fn validate_shape(&self) -> Result<(), PolicyError> {
        if self.hot_low_percent >= self.hot_high_percent || self.hot_high_percent > 100 {
            return Err(PolicyError::Watermarks {
                low: self.hot_low_percent,
                high: self.hot_high_percent,
            });
        }
        Ok(())
    }

    /// Check the policy against a pool with `n_tiers` tiers.
    pub fn validate(&self, n_tiers: usize) -> Result<(), PolicyError> {
        self.validate_shape()?;
        for t in [Some(self.write_tier), self.pin_tier].into_iter().flatten() {
            if t >= n_tiers {
                return Err(PolicyError::NoSuchTier(t, n_tiers));
            }
        }
        Ok(())
    }

    /// The tier first writes go to.
    pub fn birth_tier(&self) -> usize {
        self.pin_tier.unwrap_or(self.write_tier)
    }

    /// Should a shard on `tier`, read `reads` times this window, move to tier 0
    /// given the hot tier's fill?
    pub fn promotion_wanted(&self, tier: usize, reads: u32, hot_used_percent: u8) -> bool {
        self.pin_tier.is_none()
            && tier > 0
            && self.promote_reads > 0
            && reads >= self.promote_reads
            && hot_used_percent < self.hot_high_percent
    }

    /// Should the hot tier shed shards, given its fill?
    pub fn demotion_wanted(&self, hot_used_percent: u8) -> bool {
        self.pin_tier.is_none() && hot_used_percent >= self.hot_high_percent
    }

    /// Has demotion done enough?
    pub fn demotion_done(&self, hot_used_percent: u8) -> bool {
        hot_used_percent <= self.hot_low_percent
    }

    /// Should a shard whose window touched `touched_sixteenths` of it be split?
    pub fn split_wanted(&self, touched_sixteenths: u32, under_pressure: bool) -> bool {
        self.split_max_touched_sixteenths > 0
            && under_pressure
            && touched_sixteenths > 0
            && touched_sixteenths <= self.split_max_touched_sixteenths as u32
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("policy serializes")
    }
    pub fn from_json(b: &[u8]) -> Result<Self, PolicyError> {
        serde_json::from_slice(b).map_err(|_| PolicyError::BadValue {
            key: "stored policy".into(),
            value: String::from_utf8_lossy(b).into_owned(),
            why: "not a policy record",
        })
    }

    /// One-line human form, the same syntax `parse` reads.
    pub fn describe(&self) -> String {
        let pin = self.pin_tier.map_or("none".to_string(), |t| t.to_string());
        format!(
            "write={},pin={},promote={},high={},low={},split={},merge={}",
            self.write_tier,
            pin,
            self.promote_reads,
            self.hot_high_percent,
            self.hot_low_percent,
            self.split_max_touched_sixteenths,
            if self.merge { "on" } else { "off" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_through_describe_and_json() {
        let p = TierPolicy::parse("write=cold,promote=2,high=80,low=50,split=0,merge=off").unwrap();
        assert_eq!(p.write_tier, 1);
        assert_eq!(p.promote_reads, 2);
        assert!(!p.merge);
        assert_eq!(TierPolicy::parse(&p.describe()).unwrap(), p);
        assert_eq!(TierPolicy::from_json(&p.to_json()).unwrap(), p);
        assert_eq!(TierPolicy::parse("").unwrap(), TierPolicy::default());
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(matches!(
            TierPolicy::parse("speed=11"),
            Err(PolicyError::UnknownKey(_))
        ));
        assert!(matches!(
            TierPolicy::parse("high=50,low=60"),
            Err(PolicyError::Watermarks { .. })
        ));
        assert!(matches!(
            TierPolicy::parse("write=lukewarm"),
            Err(PolicyError::BadValue { .. })
        ));
        assert!(matches!(
            TierPolicy::parse("promote"),
            Err(PolicyError::BadValue { .. })
        ));
        assert_eq!(
            TierPolicy::parse("write=3").unwrap().validate(2),
            Err(PolicyError::NoSuchTier(3, 2))
        );
        assert!(TierPolicy::from_json(b"{").is_err());
    }

    #[test]
    fn decisions_follow_the_watermarks() {
        let p = TierPolicy::default();
        assert!(p.promotion_wanted(1, PROMOTE_READS_DEFAULT, 10));
        assert!(!p.promotion_wanted(1, PROMOTE_READS_DEFAULT - 1, 10));
        assert!(!p.promotion_wanted(0, 100, 10));
        assert!(!p.promotion_wanted(1, 100, HOT_WATERMARK_HIGH_PERCENT));
        assert!(p.demotion_wanted(HOT_WATERMARK_HIGH_PERCENT));
        assert!(!p.demotion_done(HOT_WATERMARK_LOW_PERCENT + 1));
        let pinned = TierPolicy::parse("pin=cold").unwrap();
        assert_eq!(pinned.birth_tier(), 1);
        assert!(!pinned.promotion_wanted(1, 100, 0) && !pinned.demotion_wanted(100));
        assert!(p.split_wanted(2, true) && !p.split_wanted(2, false) && !p.split_wanted(9, true));
    }
}
