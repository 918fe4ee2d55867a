//! Recipe: TOML text → experiment → validation → per-layer plan; errors only, no panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use quench_train::Experiment;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    // `from_toml_str` validates; call the pieces again as `quench run` does after overrides.
    if let Ok(exp) = Experiment::from_toml_str(text, path, &[]) {
        if exp.validate(path).is_ok() {
            let _ = exp.layer_plan();
        }
        // The recipe round-trips through the text a checkpoint stores.
        let _ = Experiment::from_toml_str(&exp.to_toml(), path, &[]);
    }
});
