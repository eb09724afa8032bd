//! GPU memory: what the device has (to size the KV cache from `--gpu-memory-utilization`) and
//! what is in use (a gauge next to the engine metrics). Nothing here does anything on CPU.

use candle_core::Device;
use prometheus::{Gauge, Opts, Registry};

/// Device memory in use, bytes (CUDA only).
pub const GPU_MEMORY_USED_BYTES: &str = "llmserve:gpu_memory_used_bytes";
/// Device memory in all, bytes (CUDA only).
pub const GPU_MEMORY_TOTAL_BYTES: &str = "llmserve:gpu_memory_total_bytes";
/// The families this module exports on a CUDA device.
pub const GPU_FAMILIES: &[&str] = &[GPU_MEMORY_USED_BYTES, GPU_MEMORY_TOTAL_BYTES];

/// `(free, total)` bytes of the device's memory; `None` on CPU or when the driver says no.
pub fn mem_info(device: &Device) -> Option<(usize, usize)> {
    #[cfg(feature = "cuda")]
    {
        let cuda = device.as_cuda_device().ok()?;
        cuda.cuda_stream().context().mem_get_info().ok()
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        None
    }
}

/// KV-cache bytes for a GPU: `utilization` of the device's memory, less what is in use now
/// (weights, CUDA context) and less `reserve` for the step's activations.
pub fn kv_cache_budget(free: usize, total: usize, utilization: f64, reserve: usize) -> usize {
    let budget = (total as f64 * utilization.clamp(0.0, 1.0)) as usize;
    budget.saturating_sub(total.saturating_sub(free)).saturating_sub(reserve)
}

/// Registers the GPU memory gauges and keeps them current (every second, from a thread of its
/// own, as long as the process lives).
pub fn watch(device: Device, registry: &Registry, model_name: &str) -> prometheus::Result<()> {
    let labels = [("model_name", model_name), ("engine", "0")];
    let gauge = |name: &str, help: &str| -> prometheus::Result<Gauge> {
        let mut opts = Opts::new(name, help);
        for (k, v) in labels {
            opts = opts.const_label(k, v);
        }
        let g = Gauge::with_opts(opts)?;
        registry.register(Box::new(g.clone()))?;
        Ok(g)
    };
    let used = gauge(GPU_MEMORY_USED_BYTES, "GPU memory in use on the engine's device, bytes.")?;
    let total = gauge(GPU_MEMORY_TOTAL_BYTES, "GPU memory of the engine's device, bytes.")?;
    std::thread::Builder::new()
        .name("llmserve-gpu-memory".into())
        .spawn(move || {
            while let Some((free, all)) = mem_info(&device) {
                used.set((all - free) as f64);
                total.set(all as f64);
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        })
        .map(|_| ())
        .map_err(|e| prometheus::Error::Msg(format!("starting the GPU memory thread: {e}")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn budget_takes_utilization_less_used_and_reserve() {
        let gib = 1usize << 30;
        // 80 GiB device, 2 GiB used (weights, context), 90%: 72 - 2 - 1 reserve = 69 GiB.
        assert_eq!(super::kv_cache_budget(78 * gib, 80 * gib, 0.9, gib), 69 * gib);
        assert_eq!(super::kv_cache_budget(gib, 80 * gib, 0.9, gib), 0, "never negative");
    }
}
