//! The memory of a volume stream: the model's contexts and what followed
//! them (a continuous cache over the network's representations, after
//! Grave et al., 2017).
//!
//! Why: online gradient steps need many passes to learn "after shard X
//! comes shard Y" for thousands of jumps, while a repeated pattern (a boot,
//! a batch job) may come back only a few times; and the shard vocabulary
//! holds a bounded number of classes. The memory makes the model one-shot
//! whatever the vocabulary: before each event of the stream it stores the
//! context the model had (its top-layer state and the address it was last
//! given) with the event's first shard (what came next). When the model
//! later reaches a similar context (cosine similarity), the stored shard and
//! the shards stored after it (what followed that context last time, in
//! order) are candidates; the calibration of the predictor decides how
//! similar is similar enough.
//!
//! A key's similarity is `w * cos(states) + (1 - w) * cos(addresses)`,
//! `w` = `LSTM_MEMORY_STATE_WEIGHT`. The address half is a fixed
//! pseudo-random unit vector per (volume, shard) ([`address_key`],
//! `LSTM_MEMORY_ADDRESS_DIMS` dimensions: different shards are nearly
//! orthogonal): it tells contexts at different shards apart from the first
//! visit; the state half adds the history the LSTM carries (so the end of a
//! shared file read from two places, the same shard, is told apart by what
//! came before). The state half weighs less because states drift as the
//! model trains online: the same context seen one replay apart has a
//! state similarity well below 1. States share a large common
//! component (raw states of different contexts have cosine similarities
//! near 1), so the state half is *standardized* first: minus a running mean,
//! over a running standard deviation per unit (moving averages over about
//! `LSTM_MEMORY_STATS_EVENTS` states).
//!
//! A recall is only as good as it is unambiguous: a shared file read from
//! several places is one address with several continuations, and when the
//! states do not tell them apart the best match is a guess. So a recall
//! reports its *margin*: the best similarity minus the best similarity of
//! an entry that continued differently (among the `LSTM_MEMORY_NEIGHBOURS`
//! closest; 0 beyond them), and the predictor calibrates on that.
//!
//! Contract: at most `capacity` entries, the oldest replaced first (a ring);
//! keys are stored normalized in one `[capacity, hidden + address dims]`
//! tensor on the model's device; [`StateMemory::recall`] returns the best
//! match's margin (0..=2) and up to `ahead` shards from it on, in stored
//! order, never crossing the newest entry; an empty memory or a zero state recalls
//! nothing and a zero state is not stored (a stream's first event has no
//! context). Bounded: `capacity * ((hidden + address dims) * 4 + 8)` bytes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use shardblk::constants::{
    LSTM_MEMORY_ADDRESS_DIMS, LSTM_MEMORY_NEIGHBOURS, LSTM_MEMORY_STATE_WEIGHT,
    LSTM_MEMORY_STATS_EVENTS,
};
use shardblk::prefetch::lstm::vocab::ShardKey;
use tch::{Device, Kind, Tensor};

/// The address half of a key: a pseudo-random vector of
/// `LSTM_MEMORY_ADDRESS_DIMS` standard normal draws, fixed per shard.
pub fn address_key(k: ShardKey) -> Vec<f32> {
    let seed = (u64::from(k.volume) << 48) ^ k.shard.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..LSTM_MEMORY_ADDRESS_DIMS)
        .map(|_| {
            let u1: f64 = rng.random_range(f64::EPSILON..1.0);
            let u2: f64 = rng.random();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// A ring of (context, next shard) entries.
#[derive(Debug)]
pub struct StateMemory {
    keys: Tensor,
    values: Vec<u64>,
    hidden: usize,
    embed: usize,
    capacity: usize,
    /// Next slot to write.
    next: usize,
    len: usize,
    device: Device,
    /// Running mean and variance of the states, per unit.
    mean: Vec<f32>,
    var: Vec<f32>,
    /// States seen (the running statistics start as plain means).
    seen: u64,
}

/// `v / |v| * scale`, or None for a zero (or non-finite) vector.
fn normalized(v: &[f32], scale: f32) -> Option<Vec<f32>> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    (n.is_finite() && n > 0.0).then(|| v.iter().map(|x| x / n * scale).collect())
}

impl StateMemory {
    /// A memory of `capacity` entries for states of `hidden` units.
    pub fn new(capacity: usize, hidden: usize, device: Device) -> StateMemory {
        let embed = LSTM_MEMORY_ADDRESS_DIMS;
        let capacity = capacity.max(1);
        StateMemory {
            keys: Tensor::zeros(
                [capacity as i64, (hidden + embed) as i64],
                (Kind::Float, device),
            ),
            values: vec![0; capacity],
            hidden,
            embed,
            capacity,
            next: 0,
            len: 0,
            device,
            mean: vec![0.0; hidden],
            var: vec![1.0; hidden],
            seen: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fold state `v` into the running statistics.
    fn learn_stats(&mut self, v: &[f32]) {
        self.seen += 1;
        let w = 1.0 / (self.seen.min(LSTM_MEMORY_STATS_EVENTS) as f32);
        for ((x, m), s2) in v.iter().zip(&mut self.mean).zip(&mut self.var) {
            let d = x - *m;
            *m += w * d;
            *s2 = if self.seen == 1 {
                0.0
            } else {
                (1.0 - w) * (*s2 + w * d * d)
            };
        }
    }

    /// The normalized key of a context (None for a zero state).
    fn key(&self, state: &[f32], shard: ShardKey) -> Option<Vec<f32>> {
        debug_assert_eq!(state.len(), self.hidden);
        if state.iter().all(|&x| x == 0.0) {
            return None;
        }
        let std: Vec<f32> = state
            .iter()
            .zip(&self.mean)
            .zip(&self.var)
            .map(|((x, m), s2)| (x - m) / (s2.sqrt() + 1e-3))
            .collect();
        let (ws, wa) = (
            LSTM_MEMORY_STATE_WEIGHT.sqrt(),
            (1.0 - LSTM_MEMORY_STATE_WEIGHT).sqrt(),
        );
        let mut k = normalized(&std, ws).unwrap_or_else(|| vec![0.0; self.hidden]);
        k.extend(normalized(&address_key(shard), wa).unwrap_or_else(|| vec![0.0; self.embed]));
        Some(k)
    }

    /// Remember that `shard` followed the context (`state` after an event
    /// at `at`).
    pub fn insert(&mut self, state: &[f32], at: ShardKey, shard: u64) {
        if state.iter().all(|&x| x == 0.0) {
            return;
        }
        self.learn_stats(state);
        let Some(k) = self.key(state, at) else {
            return;
        };
        tch::no_grad(|| {
            let row = Tensor::from_slice(&k).to_device(self.device);
            self.keys.get(self.next as i64).copy_(&row);
        });
        self.values[self.next] = shard;
        self.next = (self.next + 1) % self.capacity;
        self.len = (self.len + 1).min(self.capacity);
    }

    /// The stored context most similar to (`state` after an event at `at`):
    /// the margin of the match and the shards that followed it, up to
    /// `ahead` of them in stored order.
    pub fn recall(&self, state: &[f32], at: ShardKey, ahead: usize) -> Option<(f32, Vec<u64>)> {
        if self.len == 0 || ahead == 0 {
            return None;
        }
        let q = self.key(state, at)?;
        let k = LSTM_MEMORY_NEIGHBOURS.min(self.len);
        let (sims, idx) = tch::no_grad(|| {
            let q = Tensor::from_slice(&q).to_device(self.device);
            let (v, i) = self
                .keys
                .narrow(0, 0, self.len as i64)
                .mv(&q)
                .topk(k as i64, 0, true, true);
            let (v, i) = (v.to_device(Device::Cpu), i.to_device(Device::Cpu));
            let mut sims = vec![0f32; k];
            let mut idx = vec![0i64; k];
            v.copy_data(&mut sims, k);
            i.copy_data(&mut idx, k);
            (sims, idx)
        });
        let at = idx[0] as usize;
        let other = (1..k)
            .find(|&j| self.values[idx[j] as usize] != self.values[at])
            .map_or(0.0, |j| sims[j].max(0.0));
        let margin = (sims[0] - other).max(0.0);
        // Entries in stored order from `at` up to (not past) the newest.
        let newest = (self.next + self.capacity - 1) % self.capacity;
        let mut out = Vec::with_capacity(ahead);
        let mut i = at;
        loop {
            out.push(self.values[i]);
            if i == newest || out.len() == ahead {
                break;
            }
            i = (i + 1) % self.capacity;
        }
        Some((margin, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state with a large common part (as LSTM states have) and a
    /// distinct small one.
    fn state(i: usize) -> Vec<f32> {
        (0..4).map(|j| if j == i { 1.5 } else { 1.0 }).collect()
    }

    fn emb(i: usize) -> ShardKey {
        ShardKey {
            volume: 0,
            shard: i as u64,
        }
    }

    #[test]
    fn address_keys_are_fixed_and_nearly_orthogonal() {
        let a = address_key(emb(7));
        assert_eq!(a, address_key(emb(7)));
        let cos = |x: &[f32], y: &[f32]| {
            let d: f32 = x.iter().zip(y).map(|(a, b)| a * b).sum();
            d / (x.iter().map(|v| v * v).sum::<f32>().sqrt()
                * y.iter().map(|v| v * v).sum::<f32>().sqrt())
        };
        let worst = (0..200)
            .map(|i| cos(&a, &address_key(emb(100 + i))).abs())
            .fold(0.0, f32::max);
        assert!(worst < 0.8, "{worst}");
        let other_volume = address_key(ShardKey {
            volume: 1,
            shard: 7,
        });
        assert!(cos(&a, &other_volume).abs() < 0.8);
    }

    #[test]
    fn recalls_what_followed_the_closest_context_in_order() {
        let mut m = StateMemory::new(4, 4, Device::Cpu);
        assert!(m.recall(&state(0), emb(0), 2).is_none(), "empty");
        m.insert(&[0.0; 4], emb(0), 99); // no context: not stored
        assert!(m.is_empty());
        for (i, shard) in [10u64, 11, 12].into_iter().enumerate() {
            m.insert(&state(i), emb(i), shard);
        }
        // (Standardized with statistics that moved since: not exactly 1.)
        let (margin, next) = m.recall(&state(1), emb(1), 5).unwrap();
        assert!(margin > 0.5, "{margin}");
        assert_eq!(
            next,
            vec![11, 12],
            "from the match to the newest, no further"
        );
        assert!(m.recall(&[0.0; 4], emb(1), 2).is_none(), "zero state");
        // The same address in two contexts: the state decides, with a
        // smaller margin (the other context is close).
        m.insert(&state(3), emb(1), 13);
        let (ambiguous, next) = m.recall(&state(3), emb(1), 1).unwrap();
        assert_eq!(next, vec![13]);
        assert!(ambiguous < margin, "{ambiguous} vs {margin}");
        let (_, next) = m.recall(&state(1), emb(1), 1).unwrap();
        assert_eq!(next, vec![11]);
        // The ring replaces the oldest: 10 goes, and order follows the ring.
        m.insert(&state(0), emb(0), 14);
        assert_eq!(m.len(), 4);
        let (_, next) = m.recall(&state(2), emb(2), 3).unwrap();
        assert_eq!(next, vec![12, 13, 14]);
        let (_, next) = m.recall(&state(0), emb(0), 3).unwrap();
        assert_eq!(next, vec![14]);
    }
}
