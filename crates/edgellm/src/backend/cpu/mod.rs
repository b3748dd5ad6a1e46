//! The CPU backend: plain-Rust kernels, vectorized with runtime-selected SIMD (`simd`), threaded
//! with rayon over output rows (`matmul`) and over (token, KV head) pairs (`attention`).

pub mod attention;
pub mod fp8;
pub mod matmul;
pub mod ops;
pub mod qmatmul;
pub mod simd;

pub use matmul::{matmul, Matrix, MatrixData};

/// Splits work across a rayon pool into disjoint writes of one output buffer.
///
/// Wraps a raw pointer so parallel tasks can write non-overlapping elements of one slice (matmul
/// output columns are strided, so `par_chunks_mut` cannot express the split).
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(*mut T);

// SAFETY: `SharedMut` is only used to write disjoint elements from parallel tasks; every user
// documents why its index sets do not overlap.
unsafe impl<T: Send> Send for SharedMut<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    pub(crate) fn new(slice: &mut [T]) -> Self {
        SharedMut(slice.as_mut_ptr())
    }

    /// Writes `value` at `index`.
    ///
    /// # Safety
    /// `index` must be in bounds of the slice this was made from, and no other task may access
    /// that element concurrently.
    #[inline(always)]
    pub(crate) unsafe fn write(self, index: usize, value: T) {
        // SAFETY: the caller guarantees bounds and exclusivity.
        unsafe { self.0.add(index).write(value) }
    }
}
