//! Least-recently-used order of the cached blocks no sequence holds: an intrusive doubly linked
//! list over block ids (two arrays allocated once), so touching, removing and evicting are O(1)
//! and never allocate.

const NIL: u32 = u32::MAX;

#[derive(Debug)]
pub(super) struct Lru {
    prev: Vec<u32>,
    next: Vec<u32>,
    linked: Vec<bool>,
    /// Least recently released.
    head: u32,
    /// Most recently released.
    tail: u32,
    len: usize,
}

impl Lru {
    pub(super) fn new(n_blocks: usize) -> Self {
        Lru {
            prev: vec![NIL; n_blocks],
            next: vec![NIL; n_blocks],
            linked: vec![false; n_blocks],
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn contains(&self, block: u32) -> bool {
        self.linked[block as usize]
    }

    /// Appends `block` as the most recently used.
    pub(super) fn push_back(&mut self, block: u32) {
        debug_assert!(!self.contains(block), "block {block} already in the LRU");
        let b = block as usize;
        self.prev[b] = self.tail;
        self.next[b] = NIL;
        if self.tail == NIL {
            self.head = block;
        } else {
            self.next[self.tail as usize] = block;
        }
        self.tail = block;
        self.linked[b] = true;
        self.len += 1;
    }

    /// Unlinks `block` (which must be in the list).
    pub(super) fn remove(&mut self, block: u32) {
        debug_assert!(self.contains(block), "block {block} not in the LRU");
        let b = block as usize;
        let (p, n) = (self.prev[b], self.next[b]);
        if p == NIL {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NIL {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.linked[b] = false;
        self.len -= 1;
    }

    /// Removes and returns the least recently used block.
    pub(super) fn pop_front(&mut self) -> Option<u32> {
        let head = self.head;
        if head == NIL {
            return None;
        }
        self.remove(head);
        Some(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_in_release_order() {
        let mut lru = Lru::new(6);
        for b in [3, 1, 4, 5] {
            lru.push_back(b);
        }
        lru.remove(1);
        lru.remove(5);
        lru.push_back(1);
        assert_eq!(lru.len(), 3);
        let order: Vec<u32> = std::iter::from_fn(|| lru.pop_front()).collect();
        assert_eq!(order, vec![3, 4, 1]);
        assert!(!lru.contains(3) && lru.len() == 0);
    }
}
