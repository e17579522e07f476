//! Connections (or anything a loop watches many of) by index, reusing freed indices, so
//! a connection's index can be its poll token (see [`super::IndexTokens`]).

/// Entries by index; a removed entry's index goes to the next insert.
#[derive(Debug)]
pub struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab { entries: Vec::new(), free: Vec::new(), len: 0 }
    }
}

impl<T> Slab<T> {
    /// Stores `value`; returns its index.
    pub fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(i) => {
                self.entries[i] = Some(value);
                i
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    pub fn remove(&mut self, index: usize) -> Option<T> {
        let value = self.entries.get_mut(index)?.take()?;
        self.free.push(index);
        self.len -= 1;
        Some(value)
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.entries.get(index)?.as_ref()
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.entries.get_mut(index)?.as_mut()
    }

    /// Entries stored.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Indices ever used, stored or free.
    pub fn slots(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &T)> {
        self.entries.iter().enumerate().filter_map(|(i, v)| v.as_ref().map(|v| (i, v)))
    }

    /// Once at most a quarter of many slots are used (a burst of connections has closed),
    /// frees the room of the free slots at the end, so the memory held for the burst comes
    /// back. O(free slots); cheap enough for a periodic sweep.
    pub fn shrink(&mut self) {
        if self.entries.len() < SHRINK_FROM || self.len * 4 > self.entries.len() {
            return;
        }
        while let Some(None) = self.entries.last() {
            self.entries.pop();
        }
        let end = self.entries.len();
        self.free.retain(|&i| i < end);
        self.entries.shrink_to_fit();
        self.free.shrink_to_fit();
    }
}

/// Slots below which `shrink` leaves a slab alone (a few pages at most).
const SHRINK_FROM: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_indices_are_reused() {
        let mut slab = Slab::default();
        let (a, b) = (slab.insert('a'), slab.insert('b'));
        assert_eq!(slab.remove(a), Some('a'));
        assert_eq!(slab.remove(a), None);
        assert_eq!(slab.insert('c'), a);
        assert_eq!((slab.len(), slab.slots()), (2, 2));
        assert_eq!(slab.iter().collect::<Vec<_>>(), [(a, &'c'), (b, &'b')]);
    }

    #[test]
    fn shrink_frees_the_free_slots_at_the_end_of_a_mostly_empty_slab() {
        let mut slab = Slab::default();
        let indices: Vec<usize> = (0..1000).map(|i| slab.insert(i)).collect();
        slab.shrink();
        assert_eq!(slab.slots(), 1000, "a full slab is left alone");
        for &i in &indices[1..] {
            if i != 10 {
                slab.remove(i);
            }
        }
        slab.shrink();
        assert_eq!((slab.len(), slab.slots()), (2, 11));
        assert!(slab.entries.capacity() < 1000);
        // Freed slots below the end are still reused, none beyond it is handed out.
        let reused: Vec<usize> = (0..9).map(|i| slab.insert(i)).collect();
        assert!(reused.iter().all(|&i| (1..10).contains(&i)), "{reused:?}");
        assert_eq!(slab.insert(99), 11);
        assert_eq!(slab.get(10), Some(&10));
    }
}
