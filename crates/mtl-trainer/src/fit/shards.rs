//! The training rows split into shards, so that ranks read only their own rows.
//!
//! With `K` shards the rows (the training files one after another, in the config's order) are
//! `K` contiguous ranges. Every global batch takes from each shard its part of the batch
//! (shard `k` gives `share(batch, k, K)` rows) in that shard's own shuffled order, and joins
//! the parts in shard order. The batches depend on `K`, never on the number of ranks: `N`
//! ranks where `N` divides `K` each hold `K / N` consecutive shards — one contiguous range of
//! rows, all a rank reads — and build their part of every batch from them alone; any other
//! `N` reads every shard and takes its contiguous share of each batch. One shard is one
//! process's order of old: a permutation of all rows each epoch.

use std::ops::Range;

use crate::fit::collective::share;

/// How the training rows are split: `rows` in all (an epoch), in `count` shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shards {
    /// Rows per epoch, over every shard.
    pub rows: usize,
    /// Shards (`K`, at least 1).
    pub count: usize,
}

impl Shards {
    /// The rows of shard `k`: a contiguous range of the training rows.
    pub fn rows_of(&self, k: usize) -> Range<usize> {
        share(self.rows, k, self.count)
    }

    /// The rows shard `k` gives to each batch of `batch` rows.
    pub fn part(&self, batch: usize, k: usize) -> usize {
        share(batch, k, self.count).len()
    }

    /// Batches per epoch with `batch` rows each: until the shard that takes longest is spent
    /// (the last batches are short); `⌈rows / batch⌉` with one shard.
    pub fn batches(&self, batch: usize) -> usize {
        (0..self.count)
            .map(|k| self.rows_of(k).len().div_ceil(self.part(batch, k).max(1)))
            .max()
            .unwrap_or(0)
    }

    /// The shards rank `rank` of `ranks` holds alone, when `ranks` divides the shard count
    /// (else `None`: every rank reads every shard).
    pub fn held(&self, rank: usize, ranks: usize) -> Option<Range<usize>> {
        (self.count.is_multiple_of(ranks)).then(|| share(self.count, rank, ranks))
    }

    /// The training rows of the shards `held`: one contiguous range.
    pub fn rows_of_shards(&self, held: &Range<usize>) -> Range<usize> {
        if held.is_empty() {
            return 0..0;
        }
        self.rows_of(held.start).start..self.rows_of(held.end - 1).end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_rows_and_batches_and_ranks_hold_whole_shards() {
        let s = Shards { rows: 10, count: 3 };
        let ranges: Vec<_> = (0..3).map(|k| s.rows_of(k)).collect();
        assert_eq!(ranges, [0..3, 3..6, 6..10]);
        // a batch of 5 gives 1 + 2 + 2 rows, as `share` splits 5 three ways
        assert_eq!((0..3).map(|k| s.part(5, k)).collect::<Vec<_>>(), [1, 2, 2]);
        // shard 0 (3 rows, 1 a batch) takes 3 batches; the others 2
        assert_eq!(s.batches(5), 3);
        // one shard: ⌈rows / batch⌉, as without shards
        for (rows, batch) in [(10, 4), (10, 5), (0, 3), (21, 1)] {
            assert_eq!(Shards { rows, count: 1 }.batches(batch), rows.div_ceil(batch));
        }
        // 6 shards over 2 or 3 ranks: whole shards each; 4 ranks: every rank reads all
        let s = Shards { rows: 100, count: 6 };
        assert_eq!(s.held(1, 2), Some(3..6));
        assert_eq!(s.rows_of_shards(&(3..6)), 50..100);
        assert_eq!(s.held(2, 3), Some(4..6));
        assert_eq!(s.held(0, 4), None);
        assert_eq!(s.rows_of_shards(&(0..0)), 0..0);
        // the ranks' rows are disjoint and cover every row
        let covered: Vec<usize> = (0..3)
            .flat_map(|r| s.rows_of_shards(&s.held(r, 3).unwrap()))
            .collect();
        assert_eq!(covered, (0..100).collect::<Vec<_>>());
    }
}
