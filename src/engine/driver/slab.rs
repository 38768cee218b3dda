//! A slab with generations, shared by the driver and the transports: a freed index is reused
//! with a new generation, so a stale reference (a completion, an event, a timer entry) to a
//! reused slot is recognised and dropped. Generations wrap at 24 bits, the width io_uring's
//! completion tokens carry.

/// Generations are 24 bits wide (see the module comment).
const GENERATION_MASK: u32 = 0xff_ffff;

pub struct Slab<T> {
    items: Vec<Option<T>>,
    generations: Vec<u32>,
    free: Vec<usize>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            items: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    /// Stores what `make` builds from the slot's new generation; returns its index.
    pub fn insert(&mut self, make: impl FnOnce(u32) -> T) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.generations[i] = (self.generations[i] + 1) & GENERATION_MASK;
                self.items[i] = Some(make(self.generations[i]));
                i
            }
            None => {
                self.items.push(Some(make(0)));
                self.generations.push(0);
                self.items.len() - 1
            }
        }
    }

    /// The item at `i` if it is still the one of `generation`.
    pub fn get(&mut self, i: usize, generation: u32) -> Option<&mut T> {
        if self.generations.get(i) != Some(&generation) {
            return None;
        }
        self.items.get_mut(i)?.as_mut()
    }

    /// The item at `i`, whatever its generation.
    pub fn get_any(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i)?.as_mut()
    }

    pub fn peek(&self, i: usize) -> Option<&T> {
        self.items.get(i)?.as_ref()
    }

    pub fn generation(&self, i: usize) -> u32 {
        self.generations.get(i).copied().unwrap_or(0)
    }

    pub fn remove(&mut self, i: usize) -> Option<T> {
        let item = self.items.get_mut(i)?.take();
        if item.is_some() {
            self.free.push(i);
        }
        item
    }

    pub fn len(&self) -> usize {
        self.items.len() - self.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One past the highest index ever used (to walk every slot).
    pub fn capacity(&self) -> usize {
        self.items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_slot_has_a_new_generation_and_stale_lookups_fail() {
        let mut slab = Slab::default();
        let a = slab.insert(|g| g);
        assert_eq!(slab.get(a, 0), Some(&mut 0));
        assert_eq!(slab.remove(a), Some(0));
        assert_eq!(slab.remove(a), None, "removing twice frees once");
        let b = slab.insert(|g| g);
        assert_eq!(a, b);
        assert_eq!(slab.get(b, 0), None, "the old generation is stale");
        assert_eq!(slab.get(b, 1), Some(&mut 1));
        assert_eq!(slab.len(), 1);
    }

    #[test]
    fn generations_wrap_at_24_bits() {
        let mut slab = Slab::default();
        let i = slab.insert(|_| ());
        slab.generations[i] = GENERATION_MASK;
        slab.remove(i);
        slab.insert(|_| ());
        assert_eq!(slab.generation(i), 0);
    }
}
