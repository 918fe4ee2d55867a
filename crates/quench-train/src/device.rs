//! Turns a device name from a recipe or `--device` into a burn `Device`, with a clear message
//! when the backend is not compiled in.

use burn::tensor::Device;

use crate::TrainError;

/// Backends compiled into this build, for messages.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut v = vec!["flex"];
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "vulkan") {
        v.push("vulkan");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "ndarray") {
        v.push("ndarray");
    }
    v
}

/// What `quench devices` prints: one line per compiled-in backend, with the adapters wgpu can
/// see in a wgpu build.
pub fn describe_devices() -> Vec<String> {
    let mut lines = vec!["flex: the CPU (always available)".to_string()];
    #[cfg(feature = "wgpu")]
    lines.push(format!("wgpu: adapters found: {}", gpu::adapters()));
    #[cfg(feature = "vulkan")]
    lines.push("vulkan: the wgpu adapters above that run Vulkan".to_string());
    #[cfg(feature = "cuda")]
    lines.push("cuda: device 0 (CUDA is probed when first used)".to_string());
    let missing: Vec<&str> = ["wgpu", "vulkan", "cuda"]
        .into_iter()
        .filter(|b| !compiled_backends().contains(b))
        .collect();
    if !missing.is_empty() {
        lines.push(format!(
            "not compiled in: {} (rebuild with `--features <name>`)",
            missing.join(", ")
        ));
    }
    lines
}

/// The (non-autodiff) device for `name`: `flex`/`cpu`, `wgpu`, `vulkan`, `cuda`.
pub fn resolve_device(name: &str) -> Result<Device, TrainError> {
    let missing = |feature: &str| TrainError::Device {
        name: name.to_string(),
        detail: format!(
            "this quench was built without the `{feature}` cargo feature (compiled-in backends: {}); \
             rebuild with `cargo build --release --features {feature}`",
            compiled_backends().join(", ")
        ),
    };
    match name {
        "flex" | "cpu" => Ok(Device::flex()),
        "ndarray" => {
            #[cfg(feature = "ndarray")]
            {
                // Deprecated in burn 0.22 (removed in 0.23): compiled in only to be measured
                // against Flex by `quench bench --device ndarray`.
                #[allow(deprecated)]
                Ok(Device::ndarray())
            }
            #[cfg(not(feature = "ndarray"))]
            Err(missing("ndarray"))
        }
        "wgpu" => {
            #[cfg(feature = "wgpu")]
            {
                gpu::wgpu_device(name, burn::tensor::wgpu::WgpuBackend::Auto)
            }
            #[cfg(not(feature = "wgpu"))]
            Err(missing("wgpu"))
        }
        "vulkan" => {
            #[cfg(feature = "vulkan")]
            {
                gpu::wgpu_device(name, burn::tensor::wgpu::WgpuBackend::Vulkan)
            }
            #[cfg(not(feature = "vulkan"))]
            Err(missing("vulkan"))
        }
        "cuda" => {
            #[cfg(feature = "cuda")]
            {
                Ok(Device::cuda(0))
            }
            #[cfg(not(feature = "cuda"))]
            Err(missing("cuda"))
        }
        other => Err(TrainError::Device {
            name: other.to_string(),
            detail: format!("unknown device; known: {}", compiled_backends().join(", ")),
        }),
    }
}

/// wgpu devices are initialized once per process, up front, so that a machine without a usable
/// adapter gets an error here (naming the adapters wgpu can see) instead of a panic inside the
/// first tensor operation.
#[cfg(feature = "wgpu")]
mod gpu {
    use std::sync::OnceLock;

    use burn::tensor::Device;
    use burn::tensor::wgpu::{WgpuBackend, wgpu};

    use crate::TrainError;

    static AUTO: OnceLock<Result<Device, String>> = OnceLock::new();
    static VULKAN: OnceLock<Result<Device, String>> = OnceLock::new();

    pub(super) fn wgpu_device(name: &str, api: WgpuBackend) -> Result<Device, TrainError> {
        let cell = if matches!(api, WgpuBackend::Vulkan) {
            &VULKAN
        } else {
            &AUTO
        };
        cell.get_or_init(|| {
            Device::wgpu_options()
                .graphics_api(api)
                .init()
                .map_err(|e| format!("{e}; adapters found: {}", adapters()))
        })
        .clone()
        .map_err(|detail| TrainError::Device {
            name: name.to_string(),
            detail,
        })
    }

    /// The adapters wgpu can see, for the error message ("none" when there is none).
    pub(super) fn adapters() -> String {
        let instance = wgpu::Instance::default();
        let found = block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        if found.is_empty() {
            return "none (for Vulkan on a machine without a GPU, install Mesa's lavapipe: \
                    `apt-get install mesa-vulkan-drivers`)"
                .into();
        }
        found
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Drives a future to completion on this thread. Native wgpu's adapter enumeration is
    /// ready on the first poll, so this tiny loop replaces an executor dependency (pollster).
    fn block_on<F: std::future::Future>(fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_lists_flex_and_names_what_is_not_compiled_in() {
        let lines = describe_devices();
        assert!(lines[0].starts_with("flex"), "{lines:?}");
        let wgpu_line = lines
            .iter()
            .any(|l| l.starts_with("wgpu: adapters found: "));
        assert_eq!(wgpu_line, cfg!(feature = "wgpu"), "{lines:?}");
        if !cfg!(feature = "cuda") {
            let last = lines.last().map(String::as_str).unwrap_or_default();
            assert!(
                last.starts_with("not compiled in:") && last.contains("cuda"),
                "{lines:?}"
            );
        }
    }

    #[test]
    fn flex_resolves_and_unknown_is_refused() {
        assert!(resolve_device("flex").is_ok());
        let err = resolve_device("tpu").unwrap_err().to_string();
        assert!(err.contains("tpu") && err.contains("flex"), "{err}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn missing_feature_names_the_feature() {
        let err = resolve_device("cuda").unwrap_err().to_string();
        assert!(
            err.contains("`cuda` cargo feature") && err.contains("flex"),
            "{err}"
        );
    }
}
