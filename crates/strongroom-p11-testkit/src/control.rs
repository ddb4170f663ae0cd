//! Writing the control file and reading the status file, from tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::plan::FaultPlan;

/// The environment variable naming the control file the module reads.
pub const CONTROL_ENV: &str = "STRONGROOM_FAULT_CONTROL";
/// The environment variable naming the real PKCS#11 module behind the fault module.
pub const TARGET_ENV: &str = "STRONGROOM_FAULT_TARGET";
/// The real module used when [`TARGET_ENV`] is unset.
pub const DEFAULT_TARGET: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The status file that goes with a control file: `<control>.status`.
#[must_use]
pub fn status_path(control: &Path) -> PathBuf {
    let mut s = control.as_os_str().to_owned();
    s.push(".status");
    PathBuf::from(s)
}

/// The control file of a fault module: set and clear the fault plan, read what was injected.
#[derive(Debug, Clone)]
pub struct FaultControl {
    path: PathBuf,
}

/// Last modification time handed out, so that every plan written gets a later one.
static LAST_MTIME: Mutex<Option<SystemTime>> = Mutex::new(None);

impl FaultControl {
    /// The control file at `path` (it need not exist; no file means no faults).
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The control file named by `STRONGROOM_FAULT_CONTROL`, if set.
    #[must_use]
    pub fn from_env() -> Option<Self> {
        std::env::var_os(CONTROL_ENV).map(Self::new)
    }

    /// The control file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Puts `plan` in force: the module sees it at its next call. Written atomically (a
    /// temporary file renamed over the control file), with a modification time later than any
    /// plan written before, so the module never misses a change however close together.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn set(&self, plan: &FaultPlan) -> std::io::Result<()> {
        let mut tmp = self.path.as_os_str().to_owned();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(plan.to_string().as_bytes())?;
            f.set_modified(next_mtime())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }

    /// Removes every fault (writes an empty plan).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn clear(&self) -> std::io::Result<()> {
        self.set(&FaultPlan::new())
    }

    /// What the module has injected so far (in this process, since the module was loaded).
    #[must_use]
    pub fn status(&self) -> FaultStatus {
        std::fs::read_to_string(status_path(&self.path))
            .map(|t| FaultStatus::parse(&t))
            .unwrap_or_default()
    }
}

fn next_mtime() -> SystemTime {
    let mut last = LAST_MTIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut t = SystemTime::now();
    if let Some(prev) = *last
        && t <= prev
    {
        t = prev + Duration::from_micros(1);
    }
    *last = Some(t);
    t
}

/// Counts of injected faults, from the status file next to the control file.
///
/// The module rewrites that file (atomically) after every injection. Its format, one line each:
/// `total N`, then `KIND CODE FUNCTION N` with `KIND` one of `fail`, `token-pulled`, `stuck`,
/// `latency`, `session-cap`, `CODE` the `CKR_...` name returned (`-` for latency), and
/// `FUNCTION` the PKCS#11 function, e.g. `fail CKR_DEVICE_ERROR C_Decrypt 12`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultStatus {
    /// All injections.
    pub total: u64,
    /// `(kind, code, function, count)`.
    pub entries: Vec<(String, String, String, u64)>,
}

impl FaultStatus {
    pub(crate) fn parse(text: &str) -> Self {
        let mut s = Self::default();
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["total", n] => s.total = n.parse().unwrap_or(0),
                [kind, code, function, n] => s.entries.push((
                    (*kind).to_owned(),
                    (*code).to_owned(),
                    (*function).to_owned(),
                    n.parse().unwrap_or(0),
                )),
                _ => {}
            }
        }
        s
    }

    /// Injections of `kind` (`fail`, `token-pulled`, `stuck`, `latency`, `session-cap`).
    #[must_use]
    pub fn count(&self, kind: &str) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.0 == kind)
            .map(|e| e.3)
            .sum()
    }

    /// Injections of `kind` into `function`.
    #[must_use]
    pub fn count_in(&self, kind: &str, function: &str) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.0 == kind && e.2 == function)
            .map(|e| e.3)
            .sum()
    }

    /// Injections that returned `code` (`CKR_...`), of any kind.
    #[must_use]
    pub fn count_code(&self, code: &str) -> u64 {
        self.entries
            .iter()
            .filter(|e| e.1 == code)
            .map(|e| e.3)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn set_writes_the_plan_atomically_with_rising_mtimes() {
        let dir = std::env::temp_dir().join(format!("p11-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = FaultControl::new(dir.join("faults"));
        let plan = FaultPlan::new().token_pulled();
        c.set(&plan).unwrap();
        let m1 = std::fs::metadata(c.path()).unwrap().modified().unwrap();
        assert_eq!(
            std::fs::read_to_string(c.path())
                .unwrap()
                .parse::<FaultPlan>()
                .unwrap(),
            plan
        );
        c.clear().unwrap();
        let m2 = std::fs::metadata(c.path()).unwrap().modified().unwrap();
        assert!(m2 > m1);
        assert_eq!(std::fs::read_to_string(c.path()).unwrap(), "");
        assert_eq!(c.status(), FaultStatus::default());
        std::fs::write(
            status_path(c.path()),
            "total 5\nfail CKR_DEVICE_ERROR C_Decrypt 3\ntoken-pulled CKR_DEVICE_REMOVED C_Encrypt 2\n",
        )
        .unwrap();
        let s = c.status();
        assert_eq!(s.total, 5);
        assert_eq!(s.count("fail"), 3);
        assert_eq!(s.count_in("token-pulled", "C_Encrypt"), 2);
        assert_eq!(s.count_code("CKR_DEVICE_ERROR"), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
