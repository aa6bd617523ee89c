//! A global-allocator wrapper that counts the bytes the program holds, so that a benchmark can
//! tell live memory from what the allocator keeps around it: peak RSS is the high-water mark
//! of the pages the process touched, which with a retaining allocator (and 2 MiB pages) sits
//! 10-20% above the most that was ever allocated at once. `use_retaining_allocator!(counting)`
//! installs it around jemalloc.

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// `A`, counting live bytes (as requested, not as rounded up by `A`) and their peak.
pub struct Counting<A>(pub A);

impl<A> Counting<A> {
    fn grew(by: usize) {
        let live = LIVE.fetch_add(by, Relaxed) + by;
        PEAK.fetch_max(live, Relaxed);
    }

    fn shrank(by: usize) {
        LIVE.fetch_sub(by, Relaxed);
    }
}

// SAFETY: every call is forwarded to `A` unchanged; the counters only observe sizes.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is `A`'s.
        let p = unsafe { self.0.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { self.0.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as `alloc`.
        unsafe { self.0.dealloc(ptr, layout) };
        Self::shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { self.0.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                Self::grew(new_size - layout.size());
            } else {
                Self::shrank(layout.size() - new_size);
            }
        }
        p
    }
}

/// Bytes allocated through [`Counting`] and not yet freed.
pub fn live_bytes() -> usize {
    LIVE.load(Relaxed)
}

/// The most bytes that were live at once through [`Counting`].
pub fn peak_bytes() -> usize {
    PEAK.load(Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::alloc::System;

    #[test]
    fn counts_live_bytes_and_their_peak() {
        // The only user of `Counting` in this test binary (its global allocator is System).
        let a = Counting(System);
        let (live0, small, big) = (
            live_bytes(),
            Layout::new::<[u8; 100]>(),
            Layout::new::<[u8; 4000]>(),
        );
        unsafe {
            let p = a.alloc(small);
            let q = a.alloc_zeroed(big);
            assert_eq!(live_bytes() - live0, 4100);
            let p = a.realloc(p, small, 1000);
            assert_eq!(live_bytes() - live0, 5000);
            let p = a.realloc(p, Layout::from_size_align(1000, 1).unwrap(), 10);
            assert_eq!(live_bytes() - live0, 4010);
            a.dealloc(q, big);
            a.dealloc(p, Layout::from_size_align(10, 1).unwrap());
        }
        assert_eq!(live_bytes(), live0);
        assert!(peak_bytes() >= live0 + 5000);
    }
}
