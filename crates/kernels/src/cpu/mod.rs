//! The CPU kernels over f32 slices: no burn types here.

pub mod exp;
pub mod flash;
pub mod matmul;
pub mod rope;
pub mod rows;
pub mod transpose;

/// An output pointer shared by rayon tasks that each write their own disjoint part of it.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: every task writes a disjoint set of elements through it.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// The element `offset` past the start (a method, so closures capture the whole wrapper).
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers stay inside the allocation the pointer came from.
        unsafe { self.0.add(offset) }
    }
}
