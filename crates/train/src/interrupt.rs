//! Interrupts (Ctrl-C, SIGTERM from a scheduler): the trainer finishes the optimizer step it is
//! in, writes a checkpoint and stops with [`TrainError::Interrupted`], which says how to
//! resume; a second signal exits the process at once.
//!
//! Programs opt in with [`install`] (the CLI does); without it signals keep their default
//! effect. [`request`] asks for the same stop from code (tests, embedding applications).
//!
//! [`TrainError::Interrupted`]: crate::TrainError::Interrupted

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

fn flag() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Routes SIGINT and SIGTERM to a graceful stop: the first sets the stop request, a second
/// (while the first is pending) exits with status 130. Idempotent.
pub fn install() -> std::io::Result<()> {
    static INSTALLED: OnceLock<std::io::Result<()>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        #[cfg(unix)]
        for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            // Order matters: the conditional exit sees the flag as it was before this signal.
            signal_hook::flag::register_conditional_shutdown(signal, 130, flag().clone())?;
            signal_hook::flag::register(signal, flag().clone())?;
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok(()),
        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
    }
}

/// Asks the running training loop to stop after its current step, as a signal would.
pub fn request() {
    flag().store(true, Ordering::SeqCst);
}

/// Whether a stop was asked for.
pub fn requested() -> bool {
    flag().load(Ordering::SeqCst)
}

/// Forgets a handled request (the trainer calls this when it stops for one, so a later run in
/// the same process starts clean).
pub fn clear() {
    flag().store(false, Ordering::SeqCst);
}
