//! The ghost queue of S3-FIFO: the hashes of keys recently evicted from the small queue, so
//! that a key that comes back soon is admitted straight to the main queue.
//!
//! Kept as two Bloom filters that take turns (a new hash goes into the active one; when it has
//! taken half the ghost's capacity the older one is cleared and becomes active), so a hash is
//! remembered for between half and all of `capacity` later evictions, in about 2.5 bytes per
//! remembered hash instead of a queue and a set of them. A false positive admits a new key to
//! the main queue: it only makes the policy a little less exact.

/// Bits per remembered hash in each filter (with [`PROBES`] probes: under 2 % false hits).
const BITS_PER_HASH: usize = 10;
/// Bits set and tested per hash (two probes' 3 % of false hits cost 0.4 to 0.7 points of hit
/// ratio on the zipf traces of `benches/cache.rs`).
const PROBES: usize = 3;

/// Two Bloom filters taking turns; owned by one shard, used under its lock.
#[derive(Debug)]
pub(crate) struct Ghost {
    filters: [Vec<u64>; 2],
    /// Index of the filter new hashes go to.
    active: usize,
    /// Hashes put into the active filter since it became active.
    inserted: usize,
    /// Hashes a filter takes before the other is cleared and takes over.
    turn: usize,
    /// Bit-index mask (the filters have a power-of-two number of bits).
    mask: u64,
}

impl Ghost {
    /// A ghost that remembers about `capacity` hashes (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        let turn = capacity.div_ceil(2).max(1);
        let bits = turn
            .saturating_mul(BITS_PER_HASH)
            .checked_next_power_of_two()
            .unwrap_or(1 << 40)
            .max(64);
        let words = bits / 64;
        Ghost {
            filters: [vec![0; words], vec![0; words]],
            active: 0,
            inserted: 0,
            turn,
            mask: bits as u64 - 1,
        }
    }

    /// The bit positions of `hash` (double hashing over a remixed hash: the shard's hashes
    /// share their top bits).
    #[inline]
    fn positions(&self, hash: u64) -> [(usize, u64); PROBES] {
        let x = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let at = |bits: u64| {
            let bit = bits & self.mask;
            ((bit / 64) as usize, 1u64 << (bit % 64))
        };
        [at(x >> 32), at(x.rotate_left(17)), at(x.rotate_left(43))]
    }

    /// Remembers `hash`.
    pub(crate) fn insert(&mut self, hash: u64) {
        if self.inserted >= self.turn {
            self.active ^= 1;
            self.filters[self.active].fill(0);
            self.inserted = 0;
        }
        let active = self.active;
        for (word, bit) in self.positions(hash) {
            self.filters[active][word] |= bit;
        }
        self.inserted += 1;
    }

    /// Whether `hash` was remembered (recently enough; or a false hit).
    pub(crate) fn contains(&self, hash: u64) -> bool {
        let positions = self.positions(hash);
        self.filters
            .iter()
            .any(|filter| positions.iter().all(|&(word, bit)| filter[word] & bit != 0))
    }
}

#[cfg(test)]
mod tests {
    use super::Ghost;

    #[test]
    fn remembers_recent_hashes_and_forgets_old_ones() {
        // Ten times smaller under Miri; the shares are the same.
        let n: u64 = if cfg!(miri) { 100 } else { 1_000 };
        let h = |x: u64| x.wrapping_mul(0x1234_5678_9ABC_DEF1);
        let mut g = Ghost::new(n as usize);
        for x in 0..n {
            g.insert(h(x));
        }
        let recent = (n / 2..n).filter(|&x| g.contains(h(x))).count() as u64;
        assert_eq!(recent, n / 2, "the last half is always remembered");
        // Two more turns push every one of them out (bar false hits).
        for x in 10 * n..11 * n {
            g.insert(h(x));
        }
        let old = (0..n).filter(|&x| g.contains(h(x))).count() as u64;
        assert!(
            old < n * 6 / 100,
            "{old} of {n} forgotten hashes still seen"
        );
        let never = (50 * n..60 * n).filter(|&x| g.contains(h(x))).count() as u64;
        assert!(never < n * 4 / 10, "{never} false hits in {}", 10 * n);
    }
}
