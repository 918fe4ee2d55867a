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
    v
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
        "wgpu" => {
            #[cfg(feature = "wgpu")]
            {
                Ok(Device::wgpu(Default::default()))
            }
            #[cfg(not(feature = "wgpu"))]
            Err(missing("wgpu"))
        }
        "vulkan" => {
            #[cfg(feature = "vulkan")]
            {
                Ok(Device::vulkan(Default::default()))
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

#[cfg(test)]
mod tests {
    use super::*;

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
