//! The cells of a [`MemoryTable`](super::MemoryTable) shard, each entry at the position its
//! hash chooses, and the control words that find them.
//!
//! A shard's entries live in segments of at most [`MAX_SEGMENT_LEN`] entries (extendible
//! hashing: a small directory picks the segment from the top bits of the hash, and a full
//! segment splits in two), so that no write ever moves more than one segment's entries.
//!
//! Within a segment, open addressing with linear probing: an entry sits at its home position
//! (a multiply-shift of the hash bits the directory did not use) or in the first free cell
//! after it. Beside each cell, a `u16` control word says whether the cell is empty, deleted,
//! or holds an entry, and then holds 16 more bits of its hash (its tag). A lookup scans
//! control words from the key's home, which are small (32 to a cache line, about 2.4 MB for a
//! million keys, so they tend to stay in cache), and reads a cell only where the tag matches
//! (a false match costs one cell read in 65,534): a hit costs one cell, one cache line out of
//! cache. (A dense slab behind an index of slot numbers costs two dependent ones: the index
//! bucket, then the slot.)
//!
//! The cells are the bulk of the memory, so the load stays high: a segment is rebuilt when
//! its live and deleted cells would pass 90 %, 85 % full and at least a sixteenth bigger when
//! it grows (a split leaves two halves 85 % full), so its live entries fill more than 84 % of
//! it while it grows. Runs of control words are long at that load (a miss scans about fifty,
//! two cache lines), but a hit reads about five and a cell.
//!
//! A removal leaves a tombstone, or an empty cell when the run ends right after it. Entries
//! never move except when their segment is rebuilt or split, by an insert: a position found
//! under a lock stays valid until the next insert.

/// A cell that held no entry since its segment was built: ends every probe.
const EMPTY: u16 = 0;
/// A cell whose entry was removed: probes go on past it; inserts reuse it.
const DELETED: u16 = 1;

/// The smallest segment allocated.
const MIN_CELLS: usize = 4;

/// The most the cells of a segment may be filled (live and deleted), in tenths: 9 (90 %).
const MAX_FILL_TENTHS: usize = 9;

/// A rebuilt segment is this full, in hundredths: 85 %.
const REBUILD_LOAD_PERCENT: usize = 85;

/// A segment this full splits in two instead of growing: the most entries a write moves.
const MAX_SEGMENT_LEN: usize = 2048;

/// Cells of a segment are numbered below `1 << SEGMENT_BITS` in a position (a segment of
/// [`MAX_SEGMENT_LEN`] entries has fewer than 2,500 cells).
const SEGMENT_BITS: u32 = 13;

/// The most bits the directory uses (a million segments per shard).
const MAX_DEPTH: u32 = 20;

/// The control word of an entry with `hash`: hash bits 16 to 31 (the low bits pick the
/// shard, the upper 32 the segment and the home), moved off the two reserved values.
#[inline]
fn tag(hash: u64) -> u16 {
    let t = (hash >> 16) as u16;
    if t <= DELETED { t + 2 } else { t }
}

/// The hash bits that pick the segment and the home.
#[inline]
fn high(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// A position: a segment and a cell in it.
#[inline]
fn position(segment: usize, cell: usize) -> usize {
    (segment << SEGMENT_BITS) | cell
}

#[inline]
fn split_position(at: usize) -> (usize, usize) {
    (at >> SEGMENT_BITS, at & ((1 << SEGMENT_BITS) - 1))
}

/// A shard's cells: a directory of segments.
#[derive(Debug)]
pub(super) struct Cells<T> {
    /// Which segment holds the hashes whose top `depth` bits (of [`high`]) are the index.
    directory: Vec<u32>,
    depth: u32,
    segments: Vec<Segment<T>>,
    /// Live cells.
    len: usize,
    /// Cells, in all segments.
    cells: usize,
}

impl<T> Default for Cells<T> {
    fn default() -> Self {
        Cells {
            directory: Vec::new(),
            depth: 0,
            segments: Vec::new(),
            len: 0,
            cells: 0,
        }
    }
}

impl<T: Default> Cells<T> {
    /// The number of entries.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The number of cells.
    pub(super) fn cells(&self) -> usize {
        self.cells
    }

    /// The segment that holds `hash`.
    #[inline]
    fn segment_of(&self, hash: u64) -> usize {
        if self.depth == 0 {
            0
        } else {
            self.directory[(high(hash) >> (32 - self.depth)) as usize] as usize
        }
    }

    /// Whether position `at` holds an entry.
    #[inline]
    pub(super) fn is_live(&self, at: usize) -> bool {
        let (s, i) = split_position(at);
        self.segments[s].words[i] > DELETED
    }

    /// The entry at `at` (a default value if the cell holds none).
    #[inline]
    pub(super) fn get(&self, at: usize) -> &T {
        let (s, i) = split_position(at);
        &self.segments[s].cells[i]
    }

    /// The entry at `at`, to change it in place.
    #[inline]
    pub(super) fn get_mut(&mut self, at: usize) -> &mut T {
        let (s, i) = split_position(at);
        &mut self.segments[s].cells[i]
    }

    /// The first position (there must be cells).
    pub(super) fn first(&self) -> usize {
        debug_assert!(self.cells > 0);
        let s = self
            .segments
            .iter()
            .position(|segment| !segment.words.is_empty())
            .unwrap_or(0);
        position(s, 0)
    }

    /// The position after `at`, through every cell of every segment and around.
    pub(super) fn next(&self, at: usize) -> usize {
        let (mut s, i) = split_position(at);
        if i + 1 < self.segments[s].words.len() {
            return at + 1;
        }
        loop {
            s = if s + 1 == self.segments.len() {
                0
            } else {
                s + 1
            };
            if !self.segments[s].words.is_empty() {
                return position(s, 0);
            }
        }
    }

    /// `at` if it is still a position, or the first one (there must be cells).
    pub(super) fn valid(&self, at: usize) -> usize {
        let (s, i) = split_position(at);
        if s < self.segments.len() && i < self.segments[s].words.len() {
            at
        } else {
            self.first()
        }
    }

    /// A position picked with the random number `r` (there must be cells).
    pub(super) fn random(&self, r: u64) -> usize {
        let s = (r % self.segments.len() as u64) as usize;
        let n = self.segments[s].words.len();
        if n == 0 {
            return self.first();
        }
        position(s, ((r >> 32) % n as u64) as usize)
    }

    /// The position of the entry whose key has `hash` and for which `is_key` holds.
    #[inline]
    pub(super) fn find(&self, hash: u64, is_key: impl FnMut(&T) -> bool) -> Option<usize> {
        if self.segments.is_empty() {
            return None;
        }
        let s = self.segment_of(hash);
        self.segments[s].find(hash, is_key).map(|i| position(s, i))
    }

    /// Stores `value`, whose key has `hash` and is not in the table, and returns its
    /// position. Rebuilds or splits the segment first when it is full, hashing its entries
    /// again with `rehash`.
    pub(super) fn insert(&mut self, hash: u64, value: T, rehash: impl Fn(&T) -> u64) -> usize {
        if self.segments.is_empty() {
            self.segments.push(Segment::default());
            self.directory = vec![0];
        }
        loop {
            let s = self.segment_of(hash);
            let segment = &mut self.segments[s];
            if let Some(i) = segment.take_cell(hash) {
                segment.cells[i] = value;
                self.len += 1;
                return position(s, i);
            }
            let before = segment.words.len();
            if segment.len + 1 > MAX_SEGMENT_LEN && segment.depth < MAX_DEPTH {
                self.split(s, &rehash);
            } else {
                segment.rebuild(&rehash);
                self.cells = self.cells - before + self.segments[s].words.len();
            }
        }
    }

    /// Removes the entry at `at` and returns it.
    pub(super) fn remove(&mut self, at: usize) -> T {
        let (s, i) = split_position(at);
        self.len -= 1;
        self.segments[s].remove(i)
    }

    /// Splits segment `s` in two by the next hash bit, doubling the directory if needed.
    #[cold]
    fn split(&mut self, s: usize, rehash: &impl Fn(&T) -> u64) {
        let old = std::mem::take(&mut self.segments[s]);
        let (depth, old_cells) = (old.depth, old.words.len());
        if depth == self.depth {
            self.directory = self.directory.iter().flat_map(|&x| [x, x]).collect();
            self.depth += 1;
        }
        // The hashes of the live entries, in the order of their cells.
        let hashes: Vec<u64> = old
            .cells
            .iter()
            .zip(&old.words)
            .filter(|&(_, &w)| w > DELETED)
            .map(|(value, _)| rehash(value))
            .collect();
        let bit = |hash: u64| high(hash) >> (31 - depth) & 1;
        let ones = hashes.iter().filter(|&&hash| bit(hash) == 1).count();
        // Each half with room for one more: the insert that asked for the split.
        let mut halves = [
            Segment::with_cells(cells_for(hashes.len() - ones + 1), depth + 1),
            Segment::with_cells(cells_for(ones + 1), depth + 1),
        ];
        let mut hashes = hashes.into_iter();
        for (value, w) in old.cells.into_iter().zip(old.words) {
            if w > DELETED {
                let hash = hashes.next().expect("one hash per live cell");
                halves[bit(hash) as usize].place(hash, value);
            }
        }
        let [zeros, ones] = halves;
        self.cells = self.cells - old_cells + zeros.words.len() + ones.words.len();
        let t = self.segments.len();
        self.segments[s] = zeros;
        self.segments.push(ones);
        let shift = self.depth - 1 - depth;
        for (i, to) in self.directory.iter_mut().enumerate() {
            if *to as usize == s && (i >> shift) & 1 == 1 {
                *to = t as u32;
            }
        }
    }
}

/// The number of cells that hold `entries` 85 % full.
fn cells_for(entries: usize) -> usize {
    (entries * 100)
        .div_ceil(REBUILD_LOAD_PERCENT)
        .max(MIN_CELLS)
}

/// One open-addressed part of a shard.
#[derive(Debug)]
struct Segment<T> {
    words: Vec<u16>,
    cells: Vec<T>,
    /// Live cells.
    len: usize,
    /// Tombstones.
    deleted: usize,
    /// The top hash bits its entries share (its directory entries agree on them).
    depth: u32,
}

impl<T> Default for Segment<T> {
    fn default() -> Self {
        Segment {
            words: Vec::new(),
            cells: Vec::new(),
            len: 0,
            deleted: 0,
            depth: 0,
        }
    }
}

impl<T: Default> Segment<T> {
    fn with_cells(cells: usize, depth: u32) -> Self {
        Segment {
            words: vec![EMPTY; cells],
            cells: std::iter::repeat_with(T::default).take(cells).collect(),
            len: 0,
            deleted: 0,
            depth,
        }
    }

    /// The first position to probe for `hash`: a multiply-shift of the hash bits below the
    /// `depth` that the segment's entries share, so the number of cells need not be a power
    /// of two.
    #[inline]
    fn home(&self, hash: u64) -> usize {
        let bits = u64::from(high(hash) << self.depth);
        ((bits * self.words.len() as u64) >> 32) as usize
    }

    #[inline]
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.words.len() { 0 } else { i + 1 }
    }

    fn prev(&self, i: usize) -> usize {
        if i == 0 { self.words.len() - 1 } else { i - 1 }
    }

    #[inline]
    fn find(&self, hash: u64, mut is_key: impl FnMut(&T) -> bool) -> Option<usize> {
        if self.words.is_empty() {
            return None;
        }
        let tag = tag(hash);
        let mut i = self.home(hash);
        // Ends: the fill stays under 90 %, so there are empty cells.
        loop {
            let w = self.words[i];
            if w == EMPTY {
                return None;
            }
            if w == tag && is_key(&self.cells[i]) {
                return Some(i);
            }
            i = self.next(i);
        }
    }

    /// Takes a free cell for a new entry with `hash` (marks it live and counts it) and
    /// returns it; `None` when the segment is full.
    fn take_cell(&mut self, hash: u64) -> Option<usize> {
        if self.words.is_empty() {
            return None;
        }
        let mut i = self.home(hash);
        while self.words[i] > DELETED {
            i = self.next(i);
        }
        if self.words[i] == DELETED {
            self.deleted -= 1;
        } else if (self.len + self.deleted + 1) * 10 > self.words.len() * MAX_FILL_TENTHS {
            return None;
        }
        self.words[i] = tag(hash);
        self.len += 1;
        Some(i)
    }

    /// Puts `value` in a segment being built (no tombstones, room guaranteed).
    fn place(&mut self, hash: u64, value: T) {
        let mut i = self.home(hash);
        while self.words[i] != EMPTY {
            i = self.next(i);
        }
        self.words[i] = tag(hash);
        self.cells[i] = value;
        self.len += 1;
    }

    /// Removes the entry in cell `i` and returns it. The cell becomes a tombstone, unless
    /// the run ends right after it: then it and the tombstones just before it become empty
    /// (no probe needs to pass them).
    fn remove(&mut self, i: usize) -> T {
        debug_assert!(self.words[i] > DELETED);
        self.len -= 1;
        let removed = std::mem::take(&mut self.cells[i]);
        if self.words[self.next(i)] != EMPTY {
            self.words[i] = DELETED;
            self.deleted += 1;
            return removed;
        }
        self.words[i] = EMPTY;
        let mut j = self.prev(i);
        while self.words[j] == DELETED {
            self.words[j] = EMPTY;
            self.deleted -= 1;
            j = self.prev(j);
        }
        removed
    }

    /// The number of cells a rebuild makes room in for the live entries plus one. A growing
    /// segment grows to 85 % full, and by at least a sixteenth, so it rebuilds a bounded
    /// number of times per doubling; a segment filled by tombstones is rebuilt at its size,
    /// or shrunk to 85 % full if that is more than a sixteenth smaller (so that churn does
    /// not leave every segment at the largest size it ever needed).
    fn rebuild_cells(&self) -> usize {
        let want = cells_for(self.len + 1);
        let now = self.words.len();
        if want > now {
            want.max(now + now / 16)
        } else if want + want / 16 < now {
            want
        } else {
            now
        }
    }

    /// Moves every entry into a segment of [`rebuild_cells`](Segment::rebuild_cells)
    /// cells, dropping the tombstones.
    #[cold]
    fn rebuild(&mut self, rehash: &impl Fn(&T) -> u64) {
        let old = std::mem::replace(self, Segment::with_cells(self.rebuild_cells(), self.depth));
        // Entries come in about the order of their homes (all but those of a run that wraps
        // around the end), and keep it in the new segment: each lands at or just after its
        // home, and the writes go through the new cells in order.
        for (value, w) in old.cells.into_iter().zip(old.words) {
            if w > DELETED {
                self.place(rehash(&value), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// An entry: its key, and the hash it is stored under.
    #[derive(Clone, Copy, Debug, Default, PartialEq)]
    struct E {
        key: u32,
        hash: u64,
    }

    fn insert(cells: &mut Cells<E>, e: E) -> usize {
        cells.insert(e.hash, e, |x: &E| x.hash)
    }

    fn find(cells: &Cells<E>, e: E) -> Option<usize> {
        cells.find(e.hash, |x| x.key == e.key)
    }

    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// Every entry is reachable where it is stored, the counts add up, no segment is over
    /// its fill, and the directory sends every hash to the segment that holds it.
    fn check(cells: &Cells<E>, model: &HashMap<u32, E>) {
        for e in model.values() {
            let at = find(cells, *e).unwrap_or_else(|| panic!("{e:?} lost"));
            assert_eq!(*cells.get(at), *e);
            assert!(cells.is_live(at));
        }
        assert_eq!(cells.len(), model.len());
        let mut total = 0;
        for (s, segment) in cells.segments.iter().enumerate() {
            let live = segment.words.iter().filter(|&&w| w > DELETED).count();
            let deleted = segment.words.iter().filter(|&&w| w == DELETED).count();
            assert_eq!(
                (live, deleted),
                (segment.len, segment.deleted),
                "segment {s}"
            );
            let fill = segment.len + segment.deleted;
            assert!(
                fill * 10 <= segment.words.len() * 9,
                "segment {s} over its fill"
            );
            assert!(segment.len <= MAX_SEGMENT_LEN, "segment {s} over its size");
            assert!(segment.words.len() < 1 << SEGMENT_BITS);
            for (e, &w) in segment.cells.iter().zip(&segment.words) {
                if w > DELETED {
                    assert_eq!(cells.segment_of(e.hash), s, "{e:?} in the wrong segment");
                }
            }
            total += segment.words.len();
        }
        assert_eq!(total, cells.cells());
        assert_eq!(cells.directory.len(), 1 << cells.depth);
    }

    #[test]
    fn finds_what_it_holds_through_growth_splits_removal_and_rebuilds() {
        let mut cells = Cells::default();
        let mut model = HashMap::new();
        let mut random = xorshift(0x9E37_79B9_7F4A_7C15);
        for round in 0..5u32 {
            for key in round * 3000..round * 3000 + 6000 {
                if let std::collections::hash_map::Entry::Vacant(v) = model.entry(key) {
                    let e = E {
                        key,
                        hash: random(),
                    };
                    insert(&mut cells, e);
                    v.insert(e);
                }
            }
            check(&cells, &model);
            let doomed: Vec<u32> = model
                .keys()
                .copied()
                .filter(|k| k % 3 != round % 3)
                .collect();
            for key in doomed {
                let e = model.remove(&key).unwrap();
                let at = find(&cells, e).unwrap();
                assert_eq!(cells.remove(at), e);
                assert_eq!(find(&cells, e), None);
            }
            check(&cells, &model);
        }
        assert!(cells.segments.len() > 2, "the test splits segments");
    }

    #[test]
    fn equal_homes_and_tags_stay_findable() {
        // Few distinct hashes above the tag: long runs, equal tags, and segments that a
        // split cannot separate (they grow instead, once the directory is at its depth).
        let mut cells = Cells::default();
        let mut model = HashMap::new();
        for key in 0..3000u32 {
            let hash = (u64::from(key % 5) << 60) | (u64::from(key % 3) << 16);
            let e = E { key, hash };
            insert(&mut cells, e);
            model.insert(key, e);
        }
        check(&cells, &model);
        for key in (0..3000u32).step_by(2) {
            let e = model.remove(&key).unwrap();
            cells.remove(find(&cells, e).unwrap());
        }
        check(&cells, &model);
    }

    #[test]
    fn removal_at_the_end_of_a_run_leaves_no_tombstones() {
        let mut cells = Cells::default();
        let e = |key: u32| E {
            key,
            hash: (7 << 16) | u64::from(key),
        };
        for key in 0..3 {
            insert(&mut cells, e(key));
        }
        cells.remove(find(&cells, e(1)).unwrap());
        assert_eq!(cells.segments[0].deleted, 1, "a tombstone inside the run");
        cells.remove(find(&cells, e(2)).unwrap());
        assert_eq!(cells.segments[0].deleted, 0, "the run's tail is cleared");
        assert!(find(&cells, e(0)).is_some());
        assert_eq!(find(&cells, e(1)), None);
    }

    #[test]
    fn churn_keeps_every_entry_and_the_size() {
        let mut cells = Cells::default();
        let mut model = HashMap::new();
        let mut random = xorshift(0x2545_F491_4F6C_DD1D);
        for key in 0..5000u32 {
            let e = E {
                key,
                hash: random(),
            };
            insert(&mut cells, e);
            model.insert(key, e);
        }
        let size = cells.cells();
        for key in 5000..60_000u32 {
            let e = E {
                key,
                hash: random(),
            };
            insert(&mut cells, e);
            model.insert(key, e);
            let old = model.remove(&(key - 5000)).unwrap();
            cells.remove(find(&cells, old).unwrap());
        }
        check(&cells, &model);
        assert!(
            cells.cells() <= size + size / 8,
            "churn at a steady size does not grow the table ({size} -> {})",
            cells.cells()
        );
    }

    #[test]
    fn load_stays_between_five_sixths_and_nine_tenths_while_growing() {
        let mut cells = Cells::default();
        let mut random = xorshift(0x9E37_79B9_7F4A_7C15);
        for key in 0..200_000u32 {
            insert(
                &mut cells,
                E {
                    key,
                    hash: random(),
                },
            );
            if key > 1000 {
                let load = cells.len() as f64 / cells.cells() as f64;
                assert!((0.84..=0.9).contains(&load), "load {load} at {key}");
            }
        }
    }

    #[test]
    fn positions_walk_every_cell_once() {
        let mut cells = Cells::default();
        let mut random = xorshift(0x1234_5678_9ABC_DEF1);
        for key in 0..10_000u32 {
            insert(
                &mut cells,
                E {
                    key,
                    hash: random(),
                },
            );
        }
        let first = cells.first();
        let (mut at, mut seen, mut live) = (first, 0, 0);
        loop {
            seen += 1;
            live += usize::from(cells.is_live(at));
            at = cells.next(at);
            if at == first {
                break;
            }
        }
        assert_eq!((seen, live), (cells.cells(), cells.len()));
        assert_eq!(cells.valid(position(cells.segments.len(), 0)), first);
    }
}
