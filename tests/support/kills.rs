//! SIGKILL at chosen points of a `quench run`, knowing the phase each kill landed in (the
//! binary records its phase in `QUENCH_TEST_PHASE_FILE`); shared by the kill tests.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// When to kill.
#[derive(Debug, Clone, Copy)]
pub enum KillAt {
    /// This many milliseconds after the start.
    Delay(u64),
    /// `.2` milliseconds after the run is seen entering phase `.0` for the `.1`-th time
    /// (1-based; e.g. the second `train` begins after the first checkpoint is complete).
    InPhase(&'static str, usize, u64),
}

/// A fixed LCG, so a failing kill sequence reproduces.
pub struct Lcg(pub u64);

impl Lcg {
    /// The next value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

fn phase(file: &Path) -> String {
    fs::read_to_string(file).unwrap_or_else(|_| "startup".into())
}

/// Runs `cmd` and SIGKILLs it at `at`; returns the phase it died in, or `None` when it finished
/// (successfully) before the kill point.
pub fn kill_at(mut cmd: Command, phase_file: &Path, at: KillAt) -> Option<String> {
    let _ = fs::remove_file(phase_file);
    let mut log = phase_file.as_os_str().to_owned();
    log.push(".stderr");
    cmd.env("QUENCH_TEST_PHASE_FILE", phase_file)
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("stderr log"));
    let failed =
        |what: &str| -> ! { panic!("{what}: {}", fs::read_to_string(&log).unwrap_or_default()) };
    let mut child = cmd.spawn().expect("spawn quench");
    let deadline = Instant::now() + Duration::from_secs(60);
    let sleep_ms = match at {
        KillAt::Delay(ms) => ms,
        KillAt::InPhase(want, nth, ms) => {
            let (mut seen, mut entries) = (String::new(), 0);
            while entries < nth {
                if let Some(status) = child.try_wait().unwrap() {
                    if !status.success() {
                        failed(&format!("quench failed before phase {want} #{nth}"));
                    }
                    return None;
                }
                assert!(
                    Instant::now() < deadline,
                    "never reached phase {want} #{nth}"
                );
                let now = phase(phase_file);
                if now != seen {
                    entries += usize::from(now == want);
                    seen = now;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            ms
        }
    };
    std::thread::sleep(Duration::from_millis(sleep_ms));
    if let Some(status) = child.try_wait().unwrap() {
        if !status.success() {
            failed("quench failed");
        }
        return None;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // The process is gone, so the file holds the last phase it entered: where the kill landed.
    Some(phase(phase_file))
}

/// Kill counts per phase, printed for the test log.
pub fn report(what: &str, counts: &BTreeMap<String, usize>) {
    let total: usize = counts.values().sum();
    eprintln!("{what}: {total} SIGKILLs landed, per phase: {counts:?}");
}
