//! The in-memory pool metadata that log replay rebuilds: volumes and their
//! mappings.
//!
//! Contract: [`MetaState::apply`] either applies a record completely or
//! returns a [`StateError`] and changes nothing; it never applies a bad record
//! silently. It also keeps [`MetaState::checkpoint_body_bytes`], the exact
//! size of the state's checkpoint encoding, so the log can refuse a record
//! whose checkpoint could not fit its slot ([`MetaState::growth_bound`]).
//! Volume sizes are multiples of [`BLOCK_SIZE_BYTES`]; a volume of `size`
//! bytes has `ceil(size / UNIT_SIZE_BYTES)` units and mappings stay inside
//! them. Shrinking a volume cuts its mappings beyond the new end.

use super::codec::Record;
use super::rangemap::{Mapping, RangeMap};
use crate::constants::{
    BLOCK_SIZE_BYTES, META_POLICY_MAX_BYTES, NAME_LEN_MAX_BYTES, SHARD_SIZE_MAX_BYTES,
    SHARD_SIZE_MIN_BYTES, TIERS_MAX, UNIT_SIZE_BYTES, VOLUMES_MAX, VOLUME_SIZE_MAX_BYTES,
};
use std::collections::BTreeMap;

/// Physical unit numbers fit the 40-bit field of a table entry.
pub const PHYS_UNIT_LIMIT: u64 = 1 << 40;

/// Checkpoint bytes of the state itself (format version + volume count).
pub(crate) const BODY_FIXED_BYTES: u64 = 4 + 4;
/// Checkpoint bytes of one volume besides its name and policy.
pub(crate) const VOLUME_FIXED_BYTES: u64 = 4 + 2 + 8 + 8 + 4 + 8;
/// Checkpoint bytes of one mapping.
pub(crate) const MAPPING_BYTES: u64 = 8 + 8 + 1 + 8;

/// A volume's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMeta {
    pub name: String,
    pub size_bytes: u64,
    pub shard_size_bytes: u64,
    /// Opaque policy bytes (JSON defined by the pool).
    pub policy: Vec<u8>,
}

impl VolumeMeta {
    /// Units of logical space (`ceil(size / UNIT)`).
    pub fn units(&self) -> u64 {
        self.size_bytes.div_ceil(UNIT_SIZE_BYTES)
    }
}

/// Why a record cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("volume {0} does not exist")]
    UnknownVolume(u32),
    #[error("volume id {0} already exists")]
    DuplicateId(u32),
    #[error("volume name {0:?} already exists")]
    DuplicateName(String),
    #[error("bad volume name {0:?} (1..={NAME_LEN_MAX_BYTES} bytes)")]
    BadName(String),
    #[error("bad volume size {0} (a non-zero multiple of {BLOCK_SIZE_BYTES} up to {VOLUME_SIZE_MAX_BYTES})")]
    BadSize(u64),
    #[error(
        "bad shard size {0} (a power of two in {SHARD_SIZE_MIN_BYTES}..={SHARD_SIZE_MAX_BYTES})"
    )]
    BadShardSize(u64),
    #[error("policy of {0} bytes exceeds {META_POLICY_MAX_BYTES}")]
    PolicyTooLarge(usize),
    #[error("too many volumes (max {VOLUMES_MAX})")]
    TooManyVolumes,
    #[error("empty unit range")]
    EmptyRange,
    #[error("units {start}..{end} beyond volume {vol} of {units} units")]
    BeyondVolume {
        vol: u32,
        start: u64,
        end: u64,
        units: u64,
    },
    #[error("tier {0} out of range (max {TIERS_MAX})")]
    BadTier(u8),
    #[error("physical units {start}+{len} beyond the addressable {PHYS_UNIT_LIMIT}")]
    BadPhys { start: u64, len: u64 },
}

/// Volumes and their mappings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaState {
    volumes: BTreeMap<u32, VolumeMeta>,
    mappings: BTreeMap<u32, RangeMap>,
    body_bytes: u64,
}

impl Default for MetaState {
    fn default() -> Self {
        MetaState {
            volumes: BTreeMap::new(),
            mappings: BTreeMap::new(),
            body_bytes: BODY_FIXED_BYTES,
        }
    }
}

fn volume_bytes(v: &VolumeMeta) -> u64 {
    VOLUME_FIXED_BYTES + v.name.len() as u64 + v.policy.len() as u64
}

impl MetaState {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn volumes(&self) -> &BTreeMap<u32, VolumeMeta> {
        &self.volumes
    }

    pub fn volume(&self, id: u32) -> Option<&VolumeMeta> {
        self.volumes.get(&id)
    }

    pub fn volume_by_name(&self, name: &str) -> Option<u32> {
        self.volumes
            .iter()
            .find(|(_, v)| v.name == name)
            .map(|(id, _)| *id)
    }

    /// The mappings of volume `id` (present for every volume).
    pub fn mappings(&self, id: u32) -> Option<&RangeMap> {
        self.mappings.get(&id)
    }

    /// Every mapping of every volume: (volume id, first logical unit, mapping),
    /// by volume then logical unit (the allocator rebuild walks this).
    pub fn all_mappings(&self) -> impl Iterator<Item = (u32, u64, Mapping)> + '_ {
        self.mappings
            .iter()
            .flat_map(|(id, m)| m.iter().map(move |(k, e)| (*id, k, e)))
    }

    /// Exact size in bytes of this state's checkpoint body.
    pub fn checkpoint_body_bytes(&self) -> u64 {
        self.body_bytes
    }

    /// Upper bound of the growth of [`Self::checkpoint_body_bytes`] if `r` is applied.
    pub fn growth_bound(&self, r: &Record) -> u64 {
        match r {
            Record::CreateVolume { name, policy, .. } => {
                VOLUME_FIXED_BYTES + name.len() as u64 + policy.len() as u64
            }
            Record::SetPolicy { policy, .. } => policy.len() as u64,
            // A map inside one entry cuts it in two and adds itself.
            Record::Map { .. } => 2 * MAPPING_BYTES,
            // An unmap inside one entry cuts it in two.
            Record::Unmap { .. } => MAPPING_BYTES,
            Record::DeleteVolume { .. } | Record::ResizeVolume { .. } => 0,
        }
    }

    fn check_range(&self, vol: u32, start: u64, len: u64) -> Result<(), StateError> {
        let v = self
            .volumes
            .get(&vol)
            .ok_or(StateError::UnknownVolume(vol))?;
        if len == 0 {
            return Err(StateError::EmptyRange);
        }
        let units = v.units();
        match start.checked_add(len) {
            Some(end) if end <= units => Ok(()),
            _ => Err(StateError::BeyondVolume {
                vol,
                start,
                end: start.saturating_add(len),
                units,
            }),
        }
    }

    fn check_size(size: u64) -> Result<(), StateError> {
        if size == 0 || size % BLOCK_SIZE_BYTES != 0 || size > VOLUME_SIZE_MAX_BYTES {
            return Err(StateError::BadSize(size));
        }
        Ok(())
    }

    /// Check `r` against the state without applying it.
    pub fn validate(&self, r: &Record) -> Result<(), StateError> {
        match r {
            Record::CreateVolume {
                id,
                name,
                size_bytes,
                shard_size_bytes,
                policy,
            } => {
                if self.volumes.contains_key(id) {
                    return Err(StateError::DuplicateId(*id));
                }
                if name.is_empty() || name.len() > NAME_LEN_MAX_BYTES {
                    return Err(StateError::BadName(name.clone()));
                }
                if self.volume_by_name(name).is_some() {
                    return Err(StateError::DuplicateName(name.clone()));
                }
                Self::check_size(*size_bytes)?;
                if !shard_size_bytes.is_power_of_two()
                    || !(SHARD_SIZE_MIN_BYTES..=SHARD_SIZE_MAX_BYTES).contains(shard_size_bytes)
                {
                    return Err(StateError::BadShardSize(*shard_size_bytes));
                }
                if policy.len() > META_POLICY_MAX_BYTES {
                    return Err(StateError::PolicyTooLarge(policy.len()));
                }
                if self.volumes.len() >= VOLUMES_MAX {
                    return Err(StateError::TooManyVolumes);
                }
                Ok(())
            }
            Record::DeleteVolume { id } => self
                .volumes
                .get(id)
                .map(|_| ())
                .ok_or(StateError::UnknownVolume(*id)),
            Record::ResizeVolume { id, size_bytes } => {
                self.volumes.get(id).ok_or(StateError::UnknownVolume(*id))?;
                Self::check_size(*size_bytes)
            }
            Record::SetPolicy { id, policy } => {
                self.volumes.get(id).ok_or(StateError::UnknownVolume(*id))?;
                if policy.len() > META_POLICY_MAX_BYTES {
                    return Err(StateError::PolicyTooLarge(policy.len()));
                }
                Ok(())
            }
            Record::Map {
                vol,
                logical_unit,
                len_units,
                tier,
                phys_unit,
            } => {
                self.check_range(*vol, *logical_unit, *len_units)?;
                if *tier as usize >= TIERS_MAX {
                    return Err(StateError::BadTier(*tier));
                }
                if phys_unit
                    .checked_add(*len_units)
                    .is_none_or(|e| e > PHYS_UNIT_LIMIT)
                {
                    return Err(StateError::BadPhys {
                        start: *phys_unit,
                        len: *len_units,
                    });
                }
                Ok(())
            }
            Record::Unmap {
                vol,
                logical_unit,
                len_units,
            } => self.check_range(*vol, *logical_unit, *len_units),
        }
    }

    /// Validate and apply `r`; on error nothing changed.
    pub fn apply(&mut self, r: &Record) -> Result<(), StateError> {
        self.validate(r)?;
        match r {
            Record::CreateVolume {
                id,
                name,
                size_bytes,
                shard_size_bytes,
                policy,
            } => {
                let v = VolumeMeta {
                    name: name.clone(),
                    size_bytes: *size_bytes,
                    shard_size_bytes: *shard_size_bytes,
                    policy: policy.clone(),
                };
                self.body_bytes += volume_bytes(&v);
                self.volumes.insert(*id, v);
                self.mappings.insert(*id, RangeMap::new());
            }
            Record::DeleteVolume { id } => {
                let v = self.volumes.remove(id).expect("validated");
                let m = self.mappings.remove(id).expect("every volume has mappings");
                self.body_bytes -= volume_bytes(&v) + m.len() as u64 * MAPPING_BYTES;
            }
            Record::ResizeVolume { id, size_bytes } => {
                let v = self.volumes.get_mut(id).expect("validated");
                v.size_bytes = *size_bytes;
                let units = v.units();
                self.with_mappings(*id, |m| m.truncate(units));
            }
            Record::SetPolicy { id, policy } => {
                let v = self.volumes.get_mut(id).expect("validated");
                self.body_bytes = self.body_bytes - v.policy.len() as u64 + policy.len() as u64;
                v.policy = policy.clone();
            }
            Record::Map {
                vol,
                logical_unit,
                len_units,
                tier,
                phys_unit,
            } => {
                let m = Mapping {
                    len_units: *len_units,
                    tier: *tier,
                    phys_unit: *phys_unit,
                };
                self.with_mappings(*vol, |r| r.map(*logical_unit, m));
            }
            Record::Unmap {
                vol,
                logical_unit,
                len_units,
            } => {
                self.with_mappings(*vol, |r| r.unmap(*logical_unit, *len_units));
            }
        }
        Ok(())
    }

    /// Run `f` on a volume's mappings, keeping the size accounting exact.
    fn with_mappings(&mut self, vol: u32, f: impl FnOnce(&mut RangeMap)) {
        let r = self
            .mappings
            .get_mut(&vol)
            .expect("every volume has mappings");
        let before = r.len() as u64;
        f(r);
        let after = r.len() as u64;
        self.body_bytes = self.body_bytes - before * MAPPING_BYTES + after * MAPPING_BYTES;
    }

    /// Install a decoded volume with its mappings (checkpoint decoding).
    pub(crate) fn insert_decoded(
        &mut self,
        id: u32,
        v: VolumeMeta,
        m: RangeMap,
    ) -> Result<(), StateError> {
        self.validate(&Record::CreateVolume {
            id,
            name: v.name.clone(),
            size_bytes: v.size_bytes,
            shard_size_bytes: v.shard_size_bytes,
            policy: v.policy.clone(),
        })?;
        let units = v.units();
        for (k, e) in m.iter() {
            if k + e.len_units > units {
                return Err(StateError::BeyondVolume {
                    vol: id,
                    start: k,
                    end: k + e.len_units,
                    units,
                });
            }
            if e.tier as usize >= TIERS_MAX {
                return Err(StateError::BadTier(e.tier));
            }
            if e.phys_unit
                .checked_add(e.len_units)
                .is_none_or(|x| x > PHYS_UNIT_LIMIT)
            {
                return Err(StateError::BadPhys {
                    start: e.phys_unit,
                    len: e.len_units,
                });
            }
        }
        self.body_bytes += volume_bytes(&v) + m.len() as u64 * MAPPING_BYTES;
        self.volumes.insert(id, v);
        self.mappings.insert(id, m);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(id: u32, name: &str, units: u64) -> Record {
        Record::CreateVolume {
            id,
            name: name.into(),
            size_bytes: units * UNIT_SIZE_BYTES,
            shard_size_bytes: UNIT_SIZE_BYTES,
            policy: b"{}".to_vec(),
        }
    }

    #[test]
    fn validation_rejects_and_changes_nothing() {
        let mut s = MetaState::new();
        s.apply(&create(1, "a", 10)).unwrap();
        let before = s.clone();
        let bad = [
            (create(1, "b", 10), StateError::DuplicateId(1)),
            (create(2, "a", 10), StateError::DuplicateName("a".into())),
            (create(2, "", 10), StateError::BadName(String::new())),
            (Record::DeleteVolume { id: 9 }, StateError::UnknownVolume(9)),
            (
                Record::ResizeVolume {
                    id: 1,
                    size_bytes: 100,
                },
                StateError::BadSize(100),
            ),
            (
                Record::Map {
                    vol: 1,
                    logical_unit: 9,
                    len_units: 2,
                    tier: 0,
                    phys_unit: 0,
                },
                StateError::BeyondVolume {
                    vol: 1,
                    start: 9,
                    end: 11,
                    units: 10,
                },
            ),
            (
                Record::Map {
                    vol: 1,
                    logical_unit: 0,
                    len_units: 0,
                    tier: 0,
                    phys_unit: 0,
                },
                StateError::EmptyRange,
            ),
            (
                Record::Map {
                    vol: 1,
                    logical_unit: 0,
                    len_units: 1,
                    tier: 4,
                    phys_unit: 0,
                },
                StateError::BadTier(4),
            ),
            (
                Record::Map {
                    vol: 2,
                    logical_unit: 0,
                    len_units: 1,
                    tier: 0,
                    phys_unit: 0,
                },
                StateError::UnknownVolume(2),
            ),
            (
                Record::Unmap {
                    vol: 1,
                    logical_unit: u64::MAX,
                    len_units: 2,
                },
                StateError::BeyondVolume {
                    vol: 1,
                    start: u64::MAX,
                    end: u64::MAX,
                    units: 10,
                },
            ),
        ];
        for (r, e) in bad {
            assert_eq!(s.apply(&r), Err(e));
            assert_eq!(s, before);
        }
    }

    #[test]
    fn size_accounting_is_exact_and_bounded() {
        let mut s = MetaState::new();
        let recs = [
            create(1, "a", 10),
            create(2, "bb", 3),
            Record::Map {
                vol: 1,
                logical_unit: 0,
                len_units: 10,
                tier: 1,
                phys_unit: 0,
            },
            Record::Map {
                vol: 1,
                logical_unit: 3,
                len_units: 2,
                tier: 0,
                phys_unit: 50,
            },
            Record::Unmap {
                vol: 1,
                logical_unit: 7,
                len_units: 1,
            },
            Record::SetPolicy {
                id: 2,
                policy: vec![1; 100],
            },
            Record::ResizeVolume {
                id: 1,
                size_bytes: 4 * UNIT_SIZE_BYTES,
            },
            Record::DeleteVolume { id: 2 },
        ];
        for r in &recs {
            let before = s.checkpoint_body_bytes();
            let bound = s.growth_bound(r);
            s.apply(r).unwrap();
            assert!(s.checkpoint_body_bytes() <= before + bound, "{r:?}");
            let n: u64 = s
                .volumes()
                .keys()
                .map(|id| s.mappings(*id).unwrap().len() as u64)
                .sum();
            let exact = BODY_FIXED_BYTES
                + s.volumes().values().map(volume_bytes).sum::<u64>()
                + n * MAPPING_BYTES;
            assert_eq!(s.checkpoint_body_bytes(), exact);
        }
        // Shrink cut the mappings beyond unit 4.
        assert_eq!(s.mappings(1).unwrap().mapped_units(), 4);
        let all: Vec<_> = s
            .all_mappings()
            .map(|(v, k, m)| (v, k, m.len_units, m.phys_unit))
            .collect();
        assert_eq!(all, vec![(1, 0, 3, 0), (1, 3, 1, 50)]);
    }
}
