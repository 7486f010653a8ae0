//! Stable 64-bit hashing for placement: the same bytes hash to the same value
//! on every node, build and version (placement is computed independently by
//! every node, so the hash is part of the cluster's wire contract).
//!
//! Contract: FNV-1a over the bytes, finished with the splitmix64 finaliser so
//! that nearby inputs (shard 7, shard 8) land far apart; [`unit_open`] maps a
//! hash into the open interval (0, 1) for the logarithmic HRW score.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The splitmix64 finaliser: a bijection on u64 with full avalanche.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a of `bytes`, mixed.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = FNV_OFFSET;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    mix64(h)
}

/// Combine two hashes (order matters).
pub fn combine(a: u64, b: u64) -> u64 {
    mix64(a ^ b.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15)
}

/// Map a hash to (0, 1): the top 52 bits plus one half, over 2^52 (exact in
/// an f64). Never 0 or 1, so `ln` is finite and negative.
pub fn unit_open(h: u64) -> f64 {
    ((h >> 12) as f64 + 0.5) / (1u64 << 52) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_are_stable() {
        // Pinned: changing the hash reshuffles every cluster's placement.
        assert_eq!(hash_bytes(b""), mix64(FNV_OFFSET));
        assert_eq!(mix64(0), 0);
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"b"));
        assert_eq!(hash_bytes(b"shard"), hash_bytes(b"shard"));
    }

    #[test]
    fn unit_open_stays_inside() {
        for h in [0, 1, u64::MAX, u64::MAX - 1, 1 << 63] {
            let u = unit_open(h);
            assert!(u > 0.0 && u < 1.0, "{h} -> {u}");
        }
    }
}
