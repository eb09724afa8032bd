//! Accelerator types and how each maps onto Kubernetes scheduling.
//!
//! | `acceleratorType` | `nvidia.com/gpu.product` node label (GPU feature discovery) |
//! |---|---|
//! | `A10G` | `NVIDIA-A10G` |
//! | `L4` | `NVIDIA-L4` |
//! | `L40S` | `NVIDIA-L40S` |
//! | `A100-40G` | `NVIDIA-A100-SXM4-40GB` |
//! | `A100-80G` | `NVIDIA-A100-SXM4-80GB` |
//! | `H100` | `NVIDIA-H100-80GB-HBM3` |
//! | `H200` | `NVIDIA-H200` |
//! | `none` (or absent) | CPU only: no GPU request, no node selector |
//!
//! A GPU model requests and limits `nvidia.com/gpu` equal to `engineKwargs.tensorParallelSize`
//! (default 1) and tolerates the `nvidia.com/gpu` taint that GPU node pools commonly carry.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Extended resource name the NVIDIA device plugin advertises.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Node label GPU feature discovery sets to the GPU product name.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";

/// GPU a model runs on, in Ray Serve LLM's spelling.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AcceleratorType {
    /// NVIDIA A10G (24 GB).
    #[serde(rename = "A10G")]
    A10G,
    /// NVIDIA L4 (24 GB).
    #[serde(rename = "L4")]
    L4,
    /// NVIDIA L40S (48 GB).
    #[serde(rename = "L40S")]
    L40S,
    /// NVIDIA A100 40 GB.
    #[serde(rename = "A100-40G")]
    A100_40G,
    /// NVIDIA A100 80 GB.
    #[serde(rename = "A100-80G")]
    A100_80G,
    /// NVIDIA H100 80 GB.
    #[serde(rename = "H100")]
    H100,
    /// NVIDIA H200 141 GB.
    #[serde(rename = "H200")]
    H200,
    /// CPU only.
    #[serde(rename = "none")]
    None,
}

impl AcceleratorType {
    /// The `nvidia.com/gpu.product` value to select nodes by; `None` on CPU.
    pub fn gpu_product(self) -> Option<&'static str> {
        Some(match self {
            AcceleratorType::A10G => "NVIDIA-A10G",
            AcceleratorType::L4 => "NVIDIA-L4",
            AcceleratorType::L40S => "NVIDIA-L40S",
            AcceleratorType::A100_40G => "NVIDIA-A100-SXM4-40GB",
            AcceleratorType::A100_80G => "NVIDIA-A100-SXM4-80GB",
            AcceleratorType::H100 => "NVIDIA-H100-80GB-HBM3",
            AcceleratorType::H200 => "NVIDIA-H200",
            AcceleratorType::None => return None,
        })
    }

    /// Whether this type asks for a GPU.
    pub fn is_gpu(self) -> bool {
        self.gpu_product().is_some()
    }

    /// Ray's spelling, as used in labels and usage data.
    pub fn as_str(self) -> &'static str {
        match self {
            AcceleratorType::A10G => "A10G",
            AcceleratorType::L4 => "L4",
            AcceleratorType::L40S => "L40S",
            AcceleratorType::A100_40G => "A100-40G",
            AcceleratorType::A100_80G => "A100-80G",
            AcceleratorType::H100 => "H100",
            AcceleratorType::H200 => "H200",
            AcceleratorType::None => "none",
        }
    }
}
