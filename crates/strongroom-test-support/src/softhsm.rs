//! SoftHSM2 tokens for tests, one per test, each in its own process.
//!
//! SoftHSM2 reads `SOFTHSM2_CONF` once, in `C_Initialize`, and a PKCS#11 library is initialized
//! once per process; tests that finalize the library (to lose sessions on purpose) would also pull
//! it from under every other test in the process. So each PKCS#11 test runs isolated:
//! [`isolated`] makes a token in a fresh temporary directory (its own `softhsm2.conf` and token
//! directory, never the system's), re-runs the current test binary as a child with
//! `SOFTHSM2_CONF` pointing there and a filter that selects exactly this test, and fails unless
//! the child ran that one test and passed. Inside the child, the same call runs the test body.
//!
//! The child also gets `STRONGROOM_FAULT_CONTROL` (the token's [`Token::fault_control`] file) and
//! `STRONGROOM_FAULT_TARGET` (the SoftHSM2 module), for tests that run the backend on the
//! fault-injecting module of `strongroom-p11-testkit`; other tests never load that module, and
//! without a control file it injects nothing.
//!
//! If SoftHSM2 is not installed the test fails and says how to install it; it never skips.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian, Ubuntu, Fedora and source builds put the SoftHSM2 module.
pub const MODULE_CANDIDATES: &[&str] = &[
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib64/pkcs11/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
];

const INSTALL_HINT: &str = "SoftHSM2 is required by strongroom's PKCS#11 tests and was not found. \
     Install it (Debian/Ubuntu: `apt-get install softhsm2 opensc`; Fedora: `dnf install softhsm opensc`) \
     or point STRONGROOM_TEST_PKCS11_MODULE at libsofthsm2.so. .ci/run installs it on CI.";

const CHILD_ENV: &str = "STRONGROOM_SOFTHSM_TOKEN_DIR";
const LABEL_ENV: &str = "STRONGROOM_SOFTHSM_TOKEN_LABEL";
const CHILD_TIMEOUT: Duration = Duration::from_secs(600);
/// Read by the fault-injecting test module (`strongroom-p11-testkit`): its control file.
const FAULT_CONTROL_ENV: &str = "STRONGROOM_FAULT_CONTROL";
/// Read by the fault-injecting test module: the real module behind it.
const FAULT_TARGET_ENV: &str = "STRONGROOM_FAULT_TARGET";

/// The SoftHSM2 module path: `STRONGROOM_TEST_PKCS11_MODULE`, or the first candidate that exists.
///
/// # Panics
/// When SoftHSM2 is not installed, with instructions.
#[must_use]
pub fn module_path() -> PathBuf {
    if let Some(p) = std::env::var_os("STRONGROOM_TEST_PKCS11_MODULE") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "STRONGROOM_TEST_PKCS11_MODULE={} does not exist. {INSTALL_HINT}",
            p.display()
        );
        return p;
    }
    MODULE_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}

/// A SoftHSM2 token in its own temporary directory.
#[derive(Debug)]
pub struct Token {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    /// The token label.
    pub label: String,
    /// The user PIN.
    pub user_pin: String,
    /// The security officer PIN.
    pub so_pin: String,
    /// The SoftHSM2 module.
    pub module: PathBuf,
}

/// The user PIN of every test token.
pub const USER_PIN: &str = "4321-user";
/// The SO PIN of every test token.
pub const SO_PIN: &str = "8765-so";

impl Token {
    /// Makes a new token labelled `label` in a fresh temporary directory.
    ///
    /// # Panics
    /// When SoftHSM2 is missing (with instructions) or `softhsm2-util` fails.
    #[must_use]
    pub fn create(label: &str) -> Self {
        let module = module_path();
        let temp = tempfile::Builder::new()
            .prefix("strongroom-softhsm-")
            .tempdir()
            .expect("temp dir");
        let dir = temp.path().to_path_buf();
        std::fs::create_dir(dir.join("tokens")).expect("token dir");
        std::fs::write(
            conf_path(&dir),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                dir.join("tokens").display()
            ),
        )
        .expect("write softhsm2.conf");
        let out = Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", conf_path(&dir))
            .args([
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                USER_PIN,
                "--so-pin",
                SO_PIN,
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run softhsm2-util ({e}). {INSTALL_HINT}"));
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let pin_file = dir.join("user.pin");
        std::fs::write(&pin_file, USER_PIN).expect("write PIN file");
        std::fs::set_permissions(
            &pin_file,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod PIN file");
        Self {
            dir,
            _temp: Some(temp),
            label: label.to_owned(),
            user_pin: USER_PIN.to_owned(),
            so_pin: SO_PIN.to_owned(),
            module,
        }
    }

    /// The token made by the parent process, as seen from inside an isolated child.
    fn from_child_env() -> Option<Self> {
        let dir = PathBuf::from(std::env::var_os(CHILD_ENV)?);
        let label = std::env::var(LABEL_ENV).expect("token label in the child environment");
        let conf =
            std::env::var_os("SOFTHSM2_CONF").expect("SOFTHSM2_CONF in the child environment");
        assert_eq!(
            PathBuf::from(conf),
            conf_path(&dir),
            "the child must use the test's own token"
        );
        Some(Self {
            dir,
            _temp: None,
            label,
            user_pin: USER_PIN.to_owned(),
            so_pin: SO_PIN.to_owned(),
            module: module_path(),
        })
    }

    /// The directory holding `softhsm2.conf` and the token files.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file holding the user PIN (mode 0600), for `PinSource::File`.
    #[must_use]
    pub fn pin_file(&self) -> PathBuf {
        self.dir.join("user.pin")
    }

    /// The control file of the fault-injecting test module (`strongroom-p11-testkit`) for this
    /// token: inside an [`isolated`] child, `STRONGROOM_FAULT_CONTROL` names it (and
    /// `STRONGROOM_FAULT_TARGET` this token's module), so a backend opened on the fault module
    /// injects what the test writes there. No file, no faults.
    #[must_use]
    pub fn fault_control(&self) -> PathBuf {
        self.dir.join("faults")
    }

    /// The `softhsm2.conf` of this token.
    #[must_use]
    pub fn conf(&self) -> PathBuf {
        conf_path(&self.dir)
    }

    /// Environment for a child process (a CLI under test, `pkcs11-tool`) to see this token.
    #[must_use]
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        vec![("SOFTHSM2_CONF", self.conf().into_os_string())]
    }

    /// Runs `pkcs11-tool` (OpenSC) against this token with `args`, logged in as the user, and
    /// returns its standard output.
    ///
    /// # Panics
    /// When `pkcs11-tool` is missing (with instructions) or fails.
    #[must_use]
    pub fn pkcs11_tool(&self, args: &[&str]) -> String {
        let out = Command::new("pkcs11-tool")
            .env("SOFTHSM2_CONF", self.conf())
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", &self.label, "--login", "--pin", &self.user_pin])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run pkcs11-tool ({e}); install OpenSC (Debian: `apt-get install opensc`)"));
        assert!(
            out.status.success(),
            "pkcs11-tool {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn conf_path(dir: &Path) -> PathBuf {
    dir.join("softhsm2.conf")
}

/// True inside the child process of an [`isolated`] test.
#[must_use]
pub fn in_isolated_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Runs `body` with a token of its own, in a child process of its own (see the module docs).
///
/// `test_path` is the test's path as `module_path!()` and the function name give it, e.g.
/// `concat!(module_path!(), "::", "my_test")`; the crate name in front is dropped to form the
/// filter.
///
/// # Panics
/// When the child fails, times out, or does not run exactly this test.
pub fn isolated(test_path: &str, body: impl FnOnce(&Token)) {
    if let Some(token) = Token::from_child_env() {
        body(&token);
        return;
    }
    let filter = test_path
        .split_once("::")
        .map_or(test_path, |(_, rest)| rest);
    let token = Token::create("strongroom-test");
    let exe = std::env::current_exe().expect("current test binary");
    let mut child = Command::new(exe)
        .args([filter, "--exact", "--nocapture", "--test-threads=1"])
        .env("SOFTHSM2_CONF", token.conf())
        .env(CHILD_ENV, token.dir())
        .env(LABEL_ENV, &token.label)
        .env(FAULT_CONTROL_ENV, token.fault_control())
        .env(FAULT_TARGET_ENV, &token.module)
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn isolated test child");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let out_reader =
        std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let err_reader =
        std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for child") {
            break Some(s);
        }
        if start.elapsed() > CHILD_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "isolated test {filter} timed out after {CHILD_TIMEOUT:?}\n--- stdout\n{out}\n--- stderr\n{err}"
        );
    };
    assert!(
        status.success(),
        "isolated test {filter} failed ({status})\n--- stdout\n{out}\n--- stderr\n{err}"
    );
    assert!(
        out.contains("test result: ok. 1 passed"),
        "isolated test {filter} did not run exactly one test (filter mismatch?)\n--- stdout\n{out}"
    );
}

/// Declares `#[test]` functions that each run [`isolated`] with a SoftHSM2 token of their own:
///
/// ```ignore
/// softhsm_tests! {
///     fn wraps_things(token) {
///         let backend = make(token);
///         ...
///     }
/// }
/// ```
#[macro_export]
macro_rules! softhsm_tests {
    ($(fn $name:ident($token:ident) $body:block)*) => {
        $(
            #[test]
            fn $name() {
                $crate::softhsm::isolated(concat!(module_path!(), "::", stringify!($name)), |$token| $body);
            }
        )*
    };
}
