//! Test-only phase marker: with `QUENCH_TEST_PHASE_FILE=PATH` set, the trainers record the
//! phase they are in (`load-data`, `prepare` — the output directory —, `train`, `eval`,
//! `checkpoint`, `finish`) in that file, so a kill test can tell where each SIGKILL landed.
//! Without the variable this does nothing.

use std::path::PathBuf;
use std::sync::OnceLock;

/// The phase file, read once per process.
fn phase_file() -> Option<&'static PathBuf> {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    FILE.get_or_init(|| std::env::var_os("QUENCH_TEST_PHASE_FILE").map(PathBuf::from))
        .as_ref()
}

/// Records that the process entered `phase` (best effort: a test aid must never fail a run).
///
/// Written to a temporary sibling and renamed, so a reader (or a kill) never sees half a name.
pub fn enter(phase: &str) {
    let Some(file) = phase_file() else {
        return;
    };
    let mut tmp = file.clone().into_os_string();
    tmp.push(".tmp");
    if std::fs::write(&tmp, phase).is_ok() {
        let _ = std::fs::rename(&tmp, file);
    }
}
