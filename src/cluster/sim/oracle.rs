//! The simulator's checker: every write issued, every acknowledgement, and
//! the read-after-acknowledged-write invariant.
//!
//! Contract: a read of a block that started at time `t` must return a
//! version at least as new as every write of that block acknowledged before
//! `t`, and the content must be the one issued with that version (zeros with
//! `Version::ZERO`). Unacknowledged writes may or may not be visible.

use crate::cluster::epoch::Version;
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Oracle {
    /// Content issued with each version, per block.
    issued: BTreeMap<(u64, Version), u64>,
    /// `(ack time, version)` of acknowledged writes, per block.
    acked: BTreeMap<u64, Vec<(u64, Version)>>,
    pub writes_acked: u64,
    pub reads_checked: u64,
}

impl Oracle {
    pub fn issue(&mut self, block: u64, version: Version, value: u64) {
        self.issued.insert((block, version), value);
    }

    pub fn ack(&mut self, block: u64, version: Version, now: u64) {
        self.acked.entry(block).or_default().push((now, version));
        self.writes_acked += 1;
    }

    /// Newest version of `block` acknowledged strictly before `t`.
    pub fn required(&self, block: u64, t: u64) -> Version {
        self.acked
            .get(&block)
            .into_iter()
            .flatten()
            .filter(|(at, _)| *at < t)
            .map(|(_, v)| *v)
            .max()
            .unwrap_or_default()
    }

    /// Newest acknowledged version of `block` ever.
    pub fn newest(&self, block: u64) -> Version {
        self.required(block, u64::MAX)
    }

    /// Blocks with at least one acknowledged write.
    pub fn written_blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.acked.keys().copied()
    }

    /// Check a read of `block` started at `started` returning `(version, value)`.
    pub fn check_read(
        &mut self,
        block: u64,
        started: u64,
        version: Version,
        value: u64,
    ) -> Result<(), String> {
        self.reads_checked += 1;
        let need = self.required(block, started);
        if version < need {
            return Err(format!(
                "block {block}: read started at {started} ms returned {version:?}, older than acknowledged {need:?}"
            ));
        }
        let want = if version == Version::ZERO {
            Some(0)
        } else {
            self.issued.get(&(block, version)).copied()
        };
        if want != Some(value) {
            return Err(format!(
                "block {block}: version {version:?} holds {value}, issued {want:?}"
            ));
        }
        Ok(())
    }
}
