//! The TRL-quickstart examples (`examples/sft_trainer.rs`, `examples/dpo_trainer.rs`) run on the
//! tiny model: the same code `cargo run --example` and the out-of-workspace crate in
//! `examples/external` run.

vlmtune::use_retaining_allocator!();

#[path = "../examples/sft_trainer.rs"]
mod sft_trainer;

#[path = "../examples/dpo_trainer.rs"]
mod dpo_trainer;

fn fixture(rel: &str) -> String {
    format!("{}/tests/fixtures/{rel}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn sft_trainer_example_trains_and_saves_an_adapter() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().display().to_string();
    let losses =
        sft_trainer::sft(&fixture("tiny-smolvlm"), &fixture("sft/data.jsonl"), &dir).unwrap();
    assert_eq!(losses.len(), 6);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert_trained(&out.path().join("final"));
}

/// The saved adapter's `lora_B` matrices (zero at initialisation) moved.
fn assert_trained(adapter: &std::path::Path) {
    let files = vlmtune_quant::SafetensorsFiles::open(&[adapter.join("adapter_model.safetensors")])
        .unwrap();
    let b: Vec<String> = files
        .keys()
        .into_iter()
        .filter(|k| k.contains("lora_B"))
        .collect();
    assert!(!b.is_empty());
    for key in b {
        let (values, _) = files.read_f32(&key).unwrap();
        assert!(values.iter().any(|v| *v != 0.0), "{key} did not train");
    }
}

#[test]
fn dpo_trainer_example_trains_and_saves_an_adapter() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().display().to_string();
    let losses =
        dpo_trainer::dpo(&fixture("tiny-smolvlm"), &fixture("dpo/data.jsonl"), &dir).unwrap();
    assert_eq!(losses.len(), 4);
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert_trained(&out.path().join("final"));
}

/// One of jemalloc's options, read back through `mallctl` into a `T`.
fn jemalloc_option<T: Default>(name: &std::ffi::CStr) -> T {
    let mut value = T::default();
    let mut len = std::mem::size_of::<T>();
    // SAFETY: `value` is a buffer of the option's type and `len` its size, as mallctl expects.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            name.as_ptr(),
            (&mut value as *mut T).cast(),
            &mut len,
            std::ptr::null_mut(),
            0,
        )
    };
    assert_eq!(rc, 0, "mallctl {name:?}");
    value
}

/// The allocator the macro installs is jemalloc with page purging off (a freed activation's
/// pages stay with the process for the next step instead of being faulted back in) and, on
/// Linux, transparent huge pages.
#[test]
fn the_retaining_allocator_never_purges_freed_pages() {
    if std::env::var_os("_RJEM_MALLOC_CONF").is_some() {
        return; // the environment overrides the compiled-in options
    }
    for option in [c"opt.dirty_decay_ms", c"opt.muzzy_decay_ms"] {
        assert_eq!(jemalloc_option::<isize>(option), -1, "{option:?}");
    }
    if cfg!(target_os = "linux") {
        let thp = jemalloc_option::<usize>(c"opt.thp") as *const std::ffi::c_char;
        // SAFETY: jemalloc hands back a pointer to a static C string.
        let thp = unsafe { std::ffi::CStr::from_ptr(thp) };
        assert_eq!(thp, c"always");
    }
}
