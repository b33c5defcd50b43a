//! A frequency sketch (TinyLFU, Einziger et al.; Caffeine's and moka's design): how often a
//! hash was seen lately, estimated by a count-min sketch of 4-bit counters (four rows, the
//! minimum of the four counters a hash maps to), halved every time it has counted ten times as
//! many events as it is wide, so that old popularity fades.
//!
//! Owned by one policy shard and used under its lock: it is told of the shard's misses (an
//! admission) and of the reads its evictor finds in a record's frequency hint, never touched by
//! a read itself (reads stay lock-free and write no shared line).

/// Rows of counters (each hash is counted in one counter per row).
const ROWS: usize = 4;
/// A counter's largest value (4 bits).
const MAX: u64 = 15;

/// The sketch (see the module docs). Caffeine's layout: the counters are in blocks of four
/// words, one word (16 counters) per row, and a hash counts in one block only (one cache line
/// read per estimate or increment): its block from the high bits of a remix of the hash, its
/// counter in each row's word from 4 bits of the low ones.
#[derive(Debug)]
pub(crate) struct Sketch {
    /// Blocks of `ROWS` words.
    words: Vec<u64>,
    /// The number of blocks (a power of two) minus one.
    mask: usize,
    /// Events counted since the last halving (halved with the counters).
    counted: usize,
    /// Events between two halvings.
    period: usize,
}

impl Sketch {
    /// A sketch for a shard that holds about `keys` keys: one counter per key in each row (at
    /// least 64), halved every ten times that many events. Two bytes per key.
    pub(crate) fn new(keys: usize) -> Self {
        let width = keys.clamp(64, 1 << 40).next_power_of_two();
        let blocks = width / 16;
        Sketch {
            words: vec![0; blocks * ROWS],
            mask: blocks - 1,
            counted: 0,
            period: width.saturating_mul(10),
        }
    }

    /// The first word of `hash`'s block, and the remix whose low 16 bits pick its counters.
    #[inline(always)]
    fn block(&self, hash: u64) -> (usize, u64) {
        // Remixed: the shard's hashes share their top bits.
        let x = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (((x >> 32) as usize & self.mask) * ROWS, x)
    }

    /// The bit offset of row `row`'s counter in its word.
    #[inline(always)]
    fn offset(x: u64, row: usize) -> u32 {
        ((x >> (4 * row)) & 15) as u32 * 4
    }

    /// How often `hash` was counted lately (an over-estimate, at most 15).
    pub(crate) fn estimate(&self, hash: u64) -> u64 {
        let (base, x) = self.block(hash);
        let block = &self.words[base..base + ROWS];
        let mut least = MAX;
        for (row, word) in block.iter().enumerate() {
            least = least.min((word >> Self::offset(x, row)) & MAX);
        }
        least
    }

    /// Counts one event of `hash`.
    pub(crate) fn increment(&mut self, hash: u64) {
        let (base, x) = self.block(hash);
        let block = &mut self.words[base..base + ROWS];
        for (row, word) in block.iter_mut().enumerate() {
            let bit = Self::offset(x, row);
            if (*word >> bit) & MAX < MAX {
                *word += 1 << bit;
            }
        }
        self.counted += 1;
        if self.counted >= self.period {
            self.halve();
        }
    }

    /// Halves every counter (and the count of events).
    fn halve(&mut self) {
        for word in &mut self.words {
            *word = (*word >> 1) & 0x7777_7777_7777_7777;
        }
        self.counted /= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::Sketch;

    #[test]
    fn counts_what_it_saw_and_forgets_it_slowly() {
        let h = |x: u64| x.wrapping_mul(0x1234_5678_9ABC_DEF1) ^ (x << 50);
        let mut s = Sketch::new(1_024);
        for _ in 0..5 {
            s.increment(h(1));
        }
        s.increment(h(2));
        assert_eq!(s.estimate(h(1)), 5);
        assert_eq!(s.estimate(h(2)), 1);
        assert_eq!(s.estimate(h(3)), 0);
        for _ in 0..40 {
            s.increment(h(1));
        }
        assert_eq!(s.estimate(h(1)), 15, "a counter stops at 15");
        // Ten times its width in other events halve everything (h(1) at least once).
        for x in 100..100 + 10 * 1_024 {
            s.increment(h(x));
        }
        let after = s.estimate(h(1));
        assert!((3..=8).contains(&after), "{after}");
    }
}
