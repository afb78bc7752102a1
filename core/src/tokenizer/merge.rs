//! The BPE merge loop shared by both tokenizers, on caller-provided memory.
//!
//! A piece of `n` bytes starts as one symbol per character (byte-level BPE: per byte), linked
//! in a list indexed by the byte offset at which each symbol starts. Each adjacent pair has a key
//! (merge rank for GPT-2 BPE, an order key of the merged token's score for SentencePiece); the
//! pair with the lowest key, leftmost on ties, is merged until no pair has a key. That is the
//! order Hugging Face `tokenizers` (binary heap on `(rank, pos)`) and llama.cpp (priority queue
//! on `(rank|score, left)`) use.
//!
//! Instead of a heap, the keys sit in the leaves of a min segment tree over byte offsets: the
//! next merge is the leftmost leaf equal to the root, every update is `O(log n)`, and the
//! memory is a fixed `4n + 2·next_pow2(n)` words: no allocation and no growth. The oracle for
//! this loop is the quadratic scan in the tests below.

/// "No symbol" / "no pair" marker.
pub(crate) const NONE: u32 = u32::MAX;

/// Words of working memory for a piece of `n` bytes (`n >= 1`).
pub(crate) const fn work_len(n: usize) -> usize {
    // Saturating: a piece too large for the address space asks for more than any buffer has.
    let p = match n.checked_next_power_of_two() {
        Some(p) => p,
        None => return usize::MAX,
    };
    n.saturating_mul(4).saturating_add(p.saturating_mul(2))
}

/// What the merge loop needs to know about a vocabulary.
pub(crate) trait PairKey {
    /// Key and merged id for the adjacent symbols `[l, r)` and `[r, end)` with ids `id_l`,
    /// `id_r` (either may be [`NONE`] for a symbol that is not a token); `None` if they do not
    /// merge. Lower keys merge first.
    fn pair(&self, l: usize, r: usize, end: usize, id_l: u32, id_r: u32) -> Option<(u32, u32)>;
}

/// Merge the symbols of one piece in `work` (at least [`work_len`]`(n)` words). `starts`
/// yields `(offset, id)` for the initial symbols in increasing offset order, the first at 0.
///
/// On return `work[..m]` holds the final symbols as `(id)` words in order and `m` is returned;
/// symbols whose id is [`NONE`] are stored as `FALLBACK | offset` instead (see [`FALLBACK`]).
pub(crate) fn merge_piece<P: PairKey>(
    work: &mut [u32],
    n: usize,
    starts: impl Iterator<Item = (usize, u32)>,
    keys: &P,
) -> usize {
    let p = n.next_power_of_two();
    let (ids, rest) = work.split_at_mut(n);
    let (next, rest) = rest.split_at_mut(n);
    let (prev, rest) = rest.split_at_mut(n);
    // The merged id of the pair whose key is in the leaf (saves a second lookup per merge).
    let (mid, rest) = rest.split_at_mut(n);
    let tree = &mut rest[..2 * p];

    // Link the initial symbols.
    let mut last = NONE;
    for (off, id) in starts {
        ids[off] = id;
        prev[off] = last;
        next[off] = NONE;
        if last != NONE {
            next[last as usize] = off as u32;
        }
        last = off as u32;
    }
    let end_of = |next: &[u32], i: usize| if next[i] == NONE { n } else { next[i] as usize };
    // Key of the pair starting at symbol `l` (followed by `r`), recording its merged id.
    let key = |mid: &mut [u32], next: &[u32], ids: &[u32], l: usize, r: usize| match keys.pair(
        l,
        r,
        end_of(next, r),
        ids[l],
        ids[r],
    ) {
        Some((k, m)) => {
            mid[l] = m;
            k
        }
        None => NONE,
    };

    // Leaves: key of the pair starting at each symbol; internal nodes: min of children.
    tree.fill(NONE);
    let mut i = 0;
    while i < n {
        let j = next[i];
        if j == NONE {
            break;
        }
        let j = j as usize;
        tree[p + i] = key(mid, next, ids, i, j);
        i = j;
    }
    for node in (1..p).rev() {
        tree[node] = tree[2 * node].min(tree[2 * node + 1]);
    }

    fn set(tree: &mut [u32], p: usize, leaf: usize, v: u32) {
        let mut node = p + leaf;
        tree[node] = v;
        while node > 1 {
            node /= 2;
            tree[node] = tree[2 * node].min(tree[2 * node + 1]);
        }
    }

    while tree[1] != NONE {
        let mut node = 1;
        while node < p {
            node = if tree[2 * node] == tree[node] {
                2 * node
            } else {
                2 * node + 1
            };
        }
        let i = node - p;
        let j = next[i] as usize;
        ids[i] = mid[i];
        let k = next[j];
        next[i] = k;
        if k != NONE {
            prev[k as usize] = i as u32;
        }
        set(tree, p, j, NONE);
        let key_i = if k == NONE {
            NONE
        } else {
            key(mid, next, ids, i, k as usize)
        };
        set(tree, p, i, key_i);
        let h = prev[i];
        if h != NONE {
            let key_h = key(mid, next, ids, h as usize, i);
            set(tree, p, h as usize, key_h);
        }
    }

    // Compact the final symbols to ids[..m]; the k-th symbol starts at an offset >= k.
    let mut m = 0;
    let mut i = 0u32;
    while i != NONE {
        let at = i as usize;
        let id = ids[at];
        ids[m] = if id == NONE { FALLBACK | at as u32 } else { id };
        m += 1;
        i = next[at];
    }
    m
}

/// Flag on a compacted symbol that is not a token: the low bits are its byte offset. Token ids
/// are below 2^24 (the GGUF array cap), offsets below 2^31 (checked by the caller).
pub(crate) const FALLBACK: u32 = 1 << 31;

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::collections::HashMap;
    use std::vec::Vec;

    /// Merge table over ids, like GPT-2 BPE: (a, b) -> (rank, merged).
    struct Table(HashMap<(u32, u32), (u32, u32)>);

    impl PairKey for Table {
        fn pair(&self, _l: usize, _r: usize, _e: usize, a: u32, b: u32) -> Option<(u32, u32)> {
            self.0.get(&(a, b)).copied()
        }
    }

    /// The oracle: rescan all pairs after every merge, take the lowest key, leftmost.
    fn naive(ids: &[u32], t: &Table) -> Vec<u32> {
        let mut s = ids.to_vec();
        loop {
            let mut best: Option<(u32, usize, u32)> = None;
            for i in 0..s.len().saturating_sub(1) {
                if let Some((k, m)) = t.0.get(&(s[i], s[i + 1])).copied() {
                    if best.is_none_or(|(bk, _, _)| k < bk) {
                        best = Some((k, i, m));
                    }
                }
            }
            let Some((_, i, m)) = best else { return s };
            s[i] = m;
            s.remove(i + 1);
        }
    }

    fn run(ids: &[u32], t: &Table) -> Vec<u32> {
        let n = ids.len();
        let mut work = std::vec![0u32; work_len(n)];
        let m = merge_piece(&mut work, n, ids.iter().copied().enumerate(), t);
        work[..m].to_vec()
    }

    #[test]
    fn matches_quadratic_oracle_on_random_tables() {
        let mut rng = crate::sample::Rng::new(7);
        for round in 0..300 {
            let alphabet = 2 + (rng.next_u64() % 4) as u32;
            let mut table = HashMap::new();
            let n_merges = (rng.next_u64() % 12) as u32;
            for rank in 0..n_merges {
                // Merge `rank` creates token `alphabet + rank` from two earlier tokens.
                let next_id = alphabet + rank;
                let a = (rng.next_u64() % next_id as u64) as u32;
                let b = (rng.next_u64() % next_id as u64) as u32;
                table.entry((a, b)).or_insert((rank, next_id));
            }
            let t = Table(table);
            let n = 1 + (rng.next_u64() % 40) as usize;
            let ids: Vec<u32> = (0..n)
                .map(|_| (rng.next_u64() % alphabet as u64) as u32)
                .collect();
            assert_eq!(run(&ids, &t), naive(&ids, &t), "round {round}: {ids:?}");
        }
    }

    #[test]
    fn leftmost_on_ties_and_non_token_symbols() {
        // "a a" -> A: "aaa" is "Aa" (leftmost first), not "aA".
        let t = Table([((0, 0), (0, 5))].into_iter().collect());
        assert_eq!(run(&[0, 0, 0], &t), [5, 0]);
        // A NONE symbol never merges and is reported by offset.
        let t = Table(HashMap::new());
        let mut work = std::vec![0u32; work_len(3)];
        let m = merge_piece(&mut work, 3, [(0, 1), (1, NONE), (2, 1)].into_iter(), &t);
        assert_eq!(&work[..m], [1, FALLBACK | 1, 1]);
    }
}
