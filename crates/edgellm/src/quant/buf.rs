//! [`Buf`]: the elements of a weight matrix, either owned (quantized or converted at load) or
//! borrowed from a memory-mapped engine package, where they already lie in the runtime layout.
//! Both read as a plain slice, so kernels do not know which one they got.

use std::ops::Deref;
use std::sync::Arc;

/// A read-only array of `T`: an owned `Vec` or a slice of memory kept alive by an owner (the
/// package's mapped file).
pub struct Buf<T> {
    repr: Repr<T>,
}

enum Repr<T> {
    Owned(Vec<T>),
    Mapped { _owner: Arc<dyn Send + Sync>, ptr: *const T, len: usize },
}

// SAFETY: a mapped `Buf` is a shared, immutable view of memory its `Arc` owner keeps alive and
// never mutates; `T: Sync` makes sharing its elements across threads sound.
unsafe impl<T: Sync> Send for Buf<T> {}
// SAFETY: as above; `Buf` hands out only `&[T]`.
unsafe impl<T: Sync> Sync for Buf<T> {}

impl<T: bytemuck::Pod> Buf<T> {
    /// The elements stored in `bytes` (little-endian), which `view` borrows from `owner`. They
    /// are used in place when aligned for `T`, and copied otherwise.
    pub fn from_owner<O: Send + Sync + 'static>(owner: Arc<O>, view: impl FnOnce(&O) -> &[u8]) -> Self {
        let bytes = view(&owner);
        match bytemuck::try_cast_slice::<u8, T>(bytes) {
            Ok(slice) if cfg!(target_endian = "little") => {
                let (ptr, len) = (slice.as_ptr(), slice.len());
                // the slice points into `owner`'s heap data, which the Arc keeps in place
                Buf { repr: Repr::Mapped { _owner: owner, ptr, len } }
            }
            _ => {
                let mut v = vec![T::zeroed(); bytes.len() / std::mem::size_of::<T>()];
                let n = std::mem::size_of_val(v.as_slice());
                bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(&bytes[..n]);
                Buf::from(v)
            }
        }
    }
}

impl<T> Buf<T> {
    /// Whether the elements live in a mapped file rather than on the heap.
    pub fn is_mapped(&self) -> bool {
        matches!(self.repr, Repr::Mapped { .. })
    }
}

impl<T> From<Vec<T>> for Buf<T> {
    fn from(v: Vec<T>) -> Self {
        Buf { repr: Repr::Owned(v) }
    }
}

impl<T> Deref for Buf<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.repr {
            Repr::Owned(v) => v,
            // SAFETY: `ptr..ptr + len` was a valid, aligned `&[T]` into memory that `_owner`
            // keeps alive and unchanged for as long as this `Buf` exists.
            Repr::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl<T: Clone> Clone for Buf<T> {
    fn clone(&self) -> Self {
        match &self.repr {
            Repr::Owned(v) => Buf::from(v.clone()),
            Repr::Mapped { _owner, ptr, len } => {
                Buf { repr: Repr::Mapped { _owner: _owner.clone(), ptr: *ptr, len: *len } }
            }
        }
    }
}

impl<T> std::fmt::Debug for Buf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_mapped() { "mapped" } else { "owned" };
        write!(f, "Buf({kind}, {} elements)", self.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_and_copied_views_read_the_same() {
        let words: Vec<u32> = (0..9).collect();
        let owner = Arc::new(bytemuck::cast_slice::<u32, u8>(&words).to_vec());
        let aligned = Buf::<f32>::from_owner(owner.clone(), |b: &Vec<u8>| &b[4..20]);
        // one byte off: not aligned for f32, so copied
        let shifted = Arc::new([&[0u8][..], bytemuck::cast_slice(&words)].concat());
        let copied = Buf::<f32>::from_owner(shifted, |b: &Vec<u8>| &b[5..21]);
        assert!(aligned.is_mapped() && !copied.is_mapped());
        assert_eq!(&aligned[..], &copied[..]);
        assert_eq!(aligned.len(), 4);
        let again = aligned.clone();
        assert_eq!(bytemuck::cast_slice::<f32, u32>(&again), &[1, 2, 3, 4]);
    }
}
