//! Mixed precision as PyTorch's `torch.autocast` (TRL's `bf16=True`): while an [`Autocast`]
//! guard is alive on a thread, every [`linear`](crate::linear) product on that thread runs in
//! the lower precision — its input and weight cast to bf16, the product accumulated in f32
//! and rounded to bf16, the result cast back to the input's dtype — while the weights, their
//! gradients and the optimiser state stay f32 ("master weights"), and everything else (norms,
//! attention, softmax, the loss) computes in f32.
//!
//! Only the forward needs the guard: the backward of a cast product runs in the dtype the
//! forward recorded (the gradient is cast to bf16 for the two backward products and back to
//! f32 for the weight), as autocast's backward does. Thread-local, like `torch.autocast`, so
//! tests and data-parallel ranks running as threads do not see each other's setting.

use std::cell::Cell;

use burn::tensor::FloatDType;

thread_local! {
    static COMPUTE_DTYPE: Cell<Option<FloatDType>> = const { Cell::new(None) };
}

/// The lower precision of the products on this thread while the guard lives (restores the
/// previous setting when dropped, so guards nest).
#[must_use = "autocast ends when the guard is dropped"]
#[derive(Debug)]
pub struct Autocast {
    previous: Option<FloatDType>,
}

impl Autocast {
    /// Computes the products in `dtype` (`None`: in the tensors' own dtype) until dropped.
    pub fn new(dtype: Option<FloatDType>) -> Self {
        let previous = COMPUTE_DTYPE.with(|c| c.replace(dtype));
        Self { previous }
    }

    /// bf16 products (TRL's `bf16=True`) until dropped.
    pub fn bf16() -> Self {
        Self::new(Some(FloatDType::BF16))
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        COMPUTE_DTYPE.with(|c| c.set(self.previous));
    }
}

/// The dtype products compute in on this thread, when autocast is on.
pub fn autocast_dtype() -> Option<FloatDType> {
    COMPUTE_DTYPE.with(Cell::get)
}
