//! What this machine's devices can tell before and during a run: whether there is a CUDA
//! device at all (asked of the NVIDIA driver, so that `--device cuda` on a machine without one
//! is a clear error instead of a panic in the CUDA runtime's thread), and how much device
//! memory the allocator holds.

use burn::tensor::backend::Backend;

/// `CUDA_ERROR_NO_DEVICE` of the driver API.
const CUDA_ERROR_NO_DEVICE: i32 = 100;

/// The number of CUDA devices the driver sees, or why there are none, in words.
pub fn cuda_device_count() -> Result<usize, String> {
    type CuInit = unsafe extern "C" fn(flags: u32) -> i32;
    type CuDeviceGetCount = unsafe extern "C" fn(count: *mut i32) -> i32;
    // SAFETY: the NVIDIA driver library's documented entry points, called with the arguments
    // the driver API prescribes; the library stays loaded for the program's life (the CUDA
    // runtime loads it again).
    unsafe {
        let library = ["libcuda.so.1", "libcuda.so", "nvcuda.dll"]
            .iter()
            .find_map(|name| libloading::Library::new(name).ok())
            .ok_or("no NVIDIA driver on this machine (libcuda.so.1 not found)")?;
        let init: libloading::Symbol<CuInit> = library
            .get(b"cuInit\0")
            .map_err(|e| format!("the NVIDIA driver has no cuInit: {e}"))?;
        let count: libloading::Symbol<CuDeviceGetCount> = library
            .get(b"cuDeviceGetCount\0")
            .map_err(|e| format!("the NVIDIA driver has no cuDeviceGetCount: {e}"))?;
        let devices = match init(0) {
            0 => {
                let mut n = 0i32;
                match count(&mut n) {
                    0 => Ok(n.max(0) as usize),
                    code => Err(format!("cuDeviceGetCount failed (CUDA error {code})")),
                }
            }
            CUDA_ERROR_NO_DEVICE => Ok(0),
            code => Err(format!(
                "the NVIDIA driver did not start (cuInit: CUDA error {code})"
            )),
        };
        std::mem::forget(library);
        match devices? {
            0 => Err("the NVIDIA driver sees no CUDA device".into()),
            n => Ok(n),
        }
    }
}

/// Bytes of device memory the allocator of `device` holds (its pools, used or free), when the
/// backend runs on CUDA; `None` on the CPU.
pub fn device_memory_reserved<B: Backend>(device: &B::Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    {
        let device: &dyn std::any::Any = device;
        if let Some(cuda) = device.downcast_ref::<burn_cuda::CudaDevice>() {
            let client = <cubecl::cuda::CudaRuntime as cubecl::Runtime>::client(cuda);
            return client.memory_usage().ok().map(|usage| usage.bytes_reserved);
        }
    }
    let _ = device;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine with a GPU the driver counts it; elsewhere the reason names the driver or
    /// the device (this machine's answer either way, never a panic).
    #[test]
    fn the_cuda_probe_answers_without_panicking() {
        match cuda_device_count() {
            Ok(n) => assert!(n >= 1),
            Err(why) => assert!(
                why.contains("NVIDIA driver") || why.contains("CUDA"),
                "{why}"
            ),
        }
    }

    #[test]
    fn the_cpu_reports_no_device_memory() {
        assert_eq!(
            device_memory_reserved::<burn::backend::Flex>(&Default::default()),
            None
        );
    }
}
