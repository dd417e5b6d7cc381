//! One way to pick the compute device, shared by every crate.
//!
//! burn 0.22 chooses the backend at run time through [`Device`]; which backends exist is a
//! matter of cargo features (`flex` always, `ndarray`, `wgpu`, `cuda` on request). Model code
//! never names a backend: it receives a `Device`.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::FeatureError;

/// The compute backends mtl knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendKind {
    /// burn's pure-Rust CPU backend (SIMD, multi-threaded); the default CPU device.
    #[default]
    Flex,
    /// burn's ndarray CPU backend (deprecated upstream, kept selectable; cargo feature `ndarray`).
    Ndarray,
    /// The wgpu GPU backend (Vulkan, Metal, DX12; cargo feature `wgpu`).
    Wgpu,
    /// The CUDA backend (cargo feature `cuda`).
    Cuda,
}

impl BackendKind {
    /// Every backend name, compiled in or not.
    pub const ALL: [BackendKind; 4] = [Self::Flex, Self::Ndarray, Self::Wgpu, Self::Cuda];

    /// The name used on the command line and in configs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }

    /// Whether this build was compiled with the backend's cargo feature.
    pub fn is_compiled(self) -> bool {
        match self {
            Self::Flex => true,
            Self::Ndarray => cfg!(feature = "ndarray"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// The backends compiled into this build.
    pub fn compiled() -> Vec<BackendKind> {
        Self::ALL.into_iter().filter(|b| b.is_compiled()).collect()
    }

    /// The plain (inference) device of this backend; call `.autodiff()` on it to train.
    ///
    /// Errors when the backend was not compiled in. Creating a GPU device is lazy: a machine
    /// without an adapter fails at the first tensor operation, see [`BackendKind::probe`].
    pub fn device(self) -> Result<Device, FeatureError> {
        match self {
            Self::Flex => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)]
            Self::Ndarray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            Self::Wgpu => Ok(Device::wgpu(Default::default())),
            #[cfg(feature = "cuda")]
            Self::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)]
            other => Err(FeatureError::BackendNotCompiled {
                name: other.name().to_string(),
                compiled: Self::compiled()
                    .iter()
                    .map(|b| b.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Whether `device` is one of the CPU backends' (flex, ndarray): its work runs on this
    /// process's rayon threads, so independent batches can be given one thread each.
    pub fn is_host_device(device: &Device) -> bool {
        [Self::Flex, Self::Ndarray]
            .into_iter()
            .filter_map(|kind| kind.device().ok())
            .any(|host| host == *device)
    }

    /// Creates the device and runs one tiny operation on it, catching the panic a backend
    /// raises when no adapter exists (e.g. wgpu without a Vulkan driver).
    pub fn probe(self) -> Result<Device, FeatureError> {
        let device = self.device()?;
        let probe_device = device.clone();
        let outcome = std::panic::catch_unwind(move || {
            let t = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &probe_device);
            t.sum().into_scalar::<f32>()
        });
        match outcome {
            Ok(v) if (v - 3.0).abs() < 1e-6 => Ok(device),
            Ok(v) => Err(FeatureError::BackendUnavailable {
                name: self.name().to_string(),
                reason: format!("probe computed {v}, expected 3"),
            }),
            Err(panic) => Err(FeatureError::BackendUnavailable {
                name: self.name().to_string(),
                reason: panic_message(&panic),
            }),
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else {
        "the backend panicked while starting".to_string()
    }
}

/// Every compiled backend that starts on this machine, flex first. A compiled backend that
/// cannot start (e.g. wgpu with no Vulkan driver) is reported on stderr as skipped, and is an
/// error instead when the environment variable `MTL_REQUIRE_<NAME>` (e.g. `MTL_REQUIRE_WGPU`)
/// is `1`, so CI cannot pass a GPU parity test silently.
pub fn usable_backends() -> Result<Vec<(BackendKind, Device)>, FeatureError> {
    let mut out = Vec::new();
    for kind in BackendKind::compiled() {
        match kind.probe() {
            Ok(device) => out.push((kind, device)),
            Err(e) => {
                let var = format!("MTL_REQUIRE_{}", kind.name().to_uppercase());
                if std::env::var(&var).as_deref() == Ok("1") {
                    return Err(e);
                }
                eprintln!("SKIPPED backend {kind}: {e} (set {var}=1 to make this an error)");
            }
        }
    }
    Ok(out)
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = FeatureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| FeatureError::UnknownBackend { name: s.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_backends_devices_are_host_devices() {
        assert!(BackendKind::is_host_device(&Device::flex()));
        assert!(BackendKind::is_host_device(&Device::flex().autodiff()));
        #[cfg(feature = "ndarray")]
        {
            #[allow(deprecated)]
            let ndarray = Device::ndarray();
            assert!(BackendKind::is_host_device(&ndarray));
        }
        #[cfg(feature = "wgpu")]
        assert!(!BackendKind::is_host_device(&Device::wgpu(Default::default())));
    }

    #[test]
    fn parses_known_names_and_rejects_others() {
        assert_eq!("flex".parse::<BackendKind>().unwrap(), BackendKind::Flex);
        assert_eq!("NDARRAY".parse::<BackendKind>().unwrap(), BackendKind::Ndarray);
        assert_eq!("wgpu".parse::<BackendKind>().unwrap(), BackendKind::Wgpu);
        let err = "tpu".parse::<BackendKind>().unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("flex"), "{err}");
    }

    #[test]
    fn flex_is_default_and_always_compiled() {
        assert_eq!(BackendKind::default(), BackendKind::Flex);
        assert!(BackendKind::Flex.is_compiled());
        assert!(BackendKind::Flex.probe().is_ok());
    }

    #[test]
    fn uncompiled_backend_is_an_error_not_a_panic() {
        if !BackendKind::Cuda.is_compiled() {
            let err = BackendKind::Cuda.device().unwrap_err().to_string();
            assert!(err.contains("cuda") && err.contains("not compiled"), "{err}");
        }
    }
}
