//! Lowering the batch on an out-of-memory at the first step, as accelerate's
//! `find_executable_batch_size` does for transformers' `auto_find_batch_size`: try the batch,
//! and on an out-of-memory halve it (the caller doubles the accumulation to keep the effective
//! batch) until it fits or a batch of one does not.
//!
//! Only device backends can do this: their allocator's failure is a panic that unwinds (burn's
//! CUDA runtime, cubecl, reports "can't allocate buffer" / `BufferTooBig`), whereas a failed
//! host allocation aborts the process. On the CPU the memory plan is the only guard.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use crate::error::{Result, TrainError};

/// Messages of a device allocator's out-of-memory: cubecl's `IoError::BufferTooBig` (and its
/// display), its launch error, and the CUDA driver's code.
const OUT_OF_MEMORY_MARKERS: [&str; 6] = [
    "out of memory",
    "out-of-memory",
    "outofmemory",
    "out_of_memory",
    "buffertoobig",
    "can't allocate buffer",
];

/// The text of a caught panic.
pub fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Whether a caught panic is a device running out of memory.
pub fn is_out_of_memory(panic: &(dyn Any + Send)) -> bool {
    let message = panic_message(panic).to_lowercase();
    OUT_OF_MEMORY_MARKERS.iter().any(|m| message.contains(m))
}

/// Calls `try_batch(b)` from `b = start`, halving `b` after each out-of-memory (calling
/// `release` first, to hand the failed attempt's memory back) until a call returns; returns
/// the batch that fitted. Another panic is re-raised, an error returned; an out-of-memory at a
/// batch of one is an error saying so.
pub fn find_executable_batch_size(
    start: usize,
    mut try_batch: impl FnMut(usize) -> Result<()>,
    mut release: impl FnMut(),
) -> Result<usize> {
    let mut batch = start.max(1);
    loop {
        match catch_unwind(AssertUnwindSafe(|| try_batch(batch))) {
            Ok(result) => return result.map(|()| batch),
            Err(panic) if is_out_of_memory(&*panic) => {
                release();
                if batch == 1 {
                    return Err(TrainError::Config {
                        field: "per_device_train_batch_size".into(),
                        message: format!(
                            "out of device memory at the first step even with a batch of 1 ({}); \
                             turn on gradient_checkpointing, quantise the frozen weights \
                             (load_in_4bit) or shorten the inputs",
                            first_line(&panic_message(&*panic))
                        ),
                    });
                }
                tracing::warn!(
                    per_device_train_batch_size = batch,
                    next = batch / 2,
                    "out of device memory at the first step; halving the batch"
                );
                batch /= 2;
            }
            Err(panic) => resume_unwind(panic),
        }
    }
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oom() -> ! {
        // cubecl's wording of a failed CUDA allocation.
        panic!("called `Result::unwrap()` on an `Err` value: BufferTooBig {{ size: 123 }}\ncan't allocate buffer of size: 123")
    }

    #[test]
    fn an_out_of_memory_halves_the_batch_until_it_fits() {
        let mut tried = Vec::new();
        let mut released = 0;
        let fitted = find_executable_batch_size(
            8,
            |b| {
                tried.push(b);
                if b > 2 {
                    oom()
                }
                Ok(())
            },
            || released += 1,
        )
        .unwrap();
        assert_eq!(fitted, 2);
        assert_eq!(tried, vec![8, 4, 2]);
        assert_eq!(released, 2);
    }

    #[test]
    fn a_batch_of_one_that_does_not_fit_is_an_error_and_other_failures_pass_through() {
        let err = find_executable_batch_size(2, |_| oom(), || {})
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("per_device_train_batch_size") && err.contains("batch of 1"),
            "{err}"
        );
        let err = find_executable_batch_size(
            4,
            |_| {
                Err(TrainError::Config {
                    field: "x".into(),
                    message: "not memory".into(),
                })
            },
            || {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("not memory"));
        let other = catch_unwind(|| {
            find_executable_batch_size(4, |_| panic!("index out of bounds"), || {})
        });
        assert!(
            other.is_err(),
            "a panic that is not an out-of-memory is not swallowed"
        );
    }

    #[test]
    fn only_allocator_failures_count_as_out_of_memory() {
        let caught = catch_unwind(|| oom()).unwrap_err();
        assert!(is_out_of_memory(&*caught));
        let caught = catch_unwind(|| panic!("CUDA_ERROR_OUT_OF_MEMORY")).unwrap_err();
        assert!(is_out_of_memory(&*caught));
        let caught = catch_unwind(|| panic!("index out of bounds")).unwrap_err();
        assert!(!is_out_of_memory(&*caught));
    }
}
