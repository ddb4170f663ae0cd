//! Throwaway PostgreSQL servers for tests: a cluster made with `initdb` in a temporary
//! directory, started with `pg_ctl` on a free loopback port (and a unix socket in the same
//! directory), stopped and removed when the test is done.
//!
//! - The server binaries: `STRONGROOM_TEST_PG_BIN`, else the newest
//!   `/usr/lib/postgresql/<version>/bin` (Debian and Ubuntu keep them off `PATH`), else
//!   `/usr/pgsql-<version>/bin` (the PGDG packages), else `initdb` on `PATH`.
//! - PostgreSQL refuses to run as root: as root, the cluster belongs to the unprivileged
//!   `postgres` user (made by the distribution's package) and every server command runs as that
//!   user through `runuser`.
//! - [`shared`] is one server per test process, each test taking its own schema
//!   ([`unique_schema`]); a watchdog process stops it and removes its directory when the test
//!   process is gone. Tests that stop or restart the server start their own with
//!   [`PgServer::start`] (stopped and removed on drop).
//!
//! If PostgreSQL is not installed the test fails and says how to install it; it never skips.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "PostgreSQL is required by strongroom's PostgreSQL tests and its server binaries were not found. \
     Install it (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`), \
     or point STRONGROOM_TEST_PG_BIN at the directory holding initdb and pg_ctl. .ci/run installs it on CI.";

/// The user the cluster belongs to when the tests run as root.
const SERVER_USER: &str = "postgres";
/// The database user the tests connect as.
pub const TEST_USER: &str = "strongroom";

/// The directory holding `initdb`, `pg_ctl` and `postgres`.
///
/// # Panics
/// When PostgreSQL is not installed, with instructions.
#[must_use]
pub fn bin_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("STRONGROOM_TEST_PG_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.join("initdb").exists(),
            "STRONGROOM_TEST_PG_BIN={} holds no initdb. {INSTALL_HINT}",
            p.display()
        );
        return p;
    }
    let mut found: Vec<(u32, PathBuf)> = Vec::new();
    for (parent, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(v) = name.strip_prefix(prefix) else {
                continue;
            };
            let major: u32 = v
                .split('.')
                .next()
                .and_then(|m| m.parse().ok())
                .unwrap_or(0);
            let bin = e.path().join("bin");
            if major > 0 && bin.join("initdb").exists() {
                found.push((major, bin));
            }
        }
    }
    if let Some((_, bin)) = found.into_iter().max() {
        return bin;
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        && out.status.success()
    {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if let Some(dir) = p.parent() {
            return dir.to_path_buf();
        }
    }
    panic!("{INSTALL_HINT}");
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of `user` (from /etc/passwd).
fn user_ids(user: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&user))
            .then(|| Some((f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?)))?
    })
}

/// A command run as the cluster's owner.
fn as_owner(program: &Path) -> Command {
    if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", SERVER_USER, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    l.local_addr().expect("local addr").port()
}

/// What a server is started with.
#[derive(Clone, Debug, Default)]
pub struct ServerOptions {
    /// Extra `postgresql.conf` lines.
    pub conf: Vec<String>,
    /// `pg_hba.conf` lines put before the default ones.
    pub hba: Vec<String>,
    /// Files copied into the data directory (owned by the server, mode 0600): (name, bytes).
    pub files: Vec<(String, Vec<u8>)>,
}

/// A throwaway PostgreSQL cluster.
pub struct PgServer {
    root: PathBuf,
    bin: PathBuf,
    port: u16,
    password: String,
    /// Remove `root` on drop (the shared server's watchdog removes it instead).
    owned: bool,
}

impl PgServer {
    /// Makes and starts a cluster in a new temporary directory.
    ///
    /// # Panics
    /// When PostgreSQL is missing (with instructions) or the server does not start (with its
    /// log).
    #[must_use]
    pub fn start() -> Self {
        Self::start_with(&ServerOptions::default())
    }

    /// [`PgServer::start`] with extra configuration.
    ///
    /// # Panics
    /// As [`PgServer::start`].
    #[must_use]
    pub fn start_with(options: &ServerOptions) -> Self {
        let bin = bin_dir();
        let root = tempfile::Builder::new()
            .prefix("strongroom-pg-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let mut pw = [0u8; 16];
        strongroom_core::rng::os_fill(&mut pw).expect("randomness");
        let password: String = pw.iter().map(|b| format!("{b:02x}")).collect();
        let root_owner = if running_as_root() {
            let (uid, gid) = user_ids(SERVER_USER).unwrap_or_else(|| {
                panic!(
                    "running as root, the test server must run as the unprivileged user `{SERVER_USER}`, which does not exist. {INSTALL_HINT}"
                )
            });
            Some((uid, gid))
        } else {
            None
        };
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, &password).expect("write pwfile");
        if let Some((uid, gid)) = root_owner {
            std::os::unix::fs::chown(&root, Some(uid), Some(gid)).expect("chown the test dir");
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).expect("chown pwfile");
        }
        let data = root.join("data");
        let out = as_owner(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                TEST_USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
                // The C locale: initdb refuses a LANG naming a locale the machine does not
                // have generated (common on fresh machines and containers).
                "--no-locale",
                "--no-instructions",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&pwfile);
        let mut conf = String::from(
            "\n# strongroom tests\nfsync = off\nfull_page_writes = off\nmax_connections = 200\nshared_buffers = 32MB\nlog_min_messages = warning\n",
        );
        conf.push_str(&format!("unix_socket_directories = '{}'\n", root.display()));
        conf.push_str("listen_addresses = '127.0.0.1'\n");
        for line in &options.conf {
            conf.push_str(line);
            conf.push('\n');
        }
        append(&data.join("postgresql.conf"), &conf);
        if !options.hba.is_empty() {
            let hba_path = data.join("pg_hba.conf");
            let old = std::fs::read_to_string(&hba_path).expect("read pg_hba.conf");
            std::fs::write(&hba_path, format!("{}\n{old}", options.hba.join("\n")))
                .expect("write pg_hba.conf");
        }
        for (name, bytes) in &options.files {
            let p = data.join(name);
            std::fs::write(&p, bytes).expect("write a server file");
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .expect("chmod");
            if let Some((uid, gid)) = root_owner {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).expect("chown");
            }
        }
        let mut server = Self {
            root,
            bin,
            port: 0,
            password,
            owned: true,
        };
        server.start_again();
        server
    }

    /// Starts the (stopped) server again, on a new free port.
    ///
    /// # Panics
    /// When it does not start, with its log.
    pub fn start_again(&mut self) {
        for attempt in 0..5 {
            let port = if self.port == 0 || attempt > 0 {
                free_port()
            } else {
                self.port
            };
            if self.pg_ctl_start(port) {
                self.port = port;
                return;
            }
        }
        panic!(
            "the test PostgreSQL server did not start: {}",
            std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
        );
    }

    /// Starts the stopped server on the port it had (so that clients reconnect to it).
    ///
    /// # Panics
    /// When it does not start.
    pub fn restart_same_port(&mut self) {
        assert!(
            self.pg_ctl_start(self.port),
            "the test PostgreSQL server did not restart on port {}: {}",
            self.port,
            std::fs::read_to_string(self.root.join("server.log")).unwrap_or_default()
        );
    }

    fn pg_ctl_start(&self, port: u16) -> bool {
        as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.root.join("data"))
            .arg("-l")
            .arg(self.root.join("server.log"))
            .arg("-o")
            .arg(format!("-p {port}"))
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the server: `immediate` is a crash (no checkpoint; the server recovers from its
    /// WAL at the next start), else a fast shutdown.
    pub fn stop(&self, immediate: bool) {
        let _ = as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.root.join("data"))
            .args(["-m", if immediate { "immediate" } else { "fast" }])
            .args(["-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// The URL of the `postgres` database as the test user (password included).
    #[must_use]
    pub fn url(&self) -> String {
        format!(
            "postgres://{TEST_USER}:{}@127.0.0.1:{}/postgres?sslmode=disable",
            self.password, self.port
        )
    }

    /// The port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The test user's password.
    #[must_use]
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The cluster's data directory (its table files are under `base/`, its WAL in `pg_wal/`).
    #[must_use]
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// The directory holding the unix socket.
    #[must_use]
    pub fn socket_dir(&self) -> &Path {
        &self.root
    }

    /// Runs `sql` with `psql` as the test user (over the unix socket); its output.
    ///
    /// # Panics
    /// When psql fails.
    #[must_use]
    pub fn psql(&self, sql: &str) -> String {
        let out = as_owner(&self.bin.join("psql"))
            .arg("-h")
            .arg(&self.root)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                TEST_USER,
                "-d",
                "postgres",
            ])
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Keeps the server running after this handle is gone, until process `pid` exits: a
    /// watchdog stops it then and removes its directory.
    fn watch(mut self, pid: u32) -> Self {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {} ; rm -rf '{}'",
            stop_command(&self.bin, &self.root.join("data")),
            self.root.display()
        );
        // Never waited for: it outlives this process on purpose (its job is to notice the end).
        #[allow(clippy::zombie_processes)]
        let _watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the server's watchdog");
        self.owned = false;
        self
    }
}

fn stop_command(bin: &Path, data: &Path) -> String {
    let pg_ctl = format!(
        "'{}' -D '{}' -m immediate -w stop >/dev/null 2>&1",
        bin.join("pg_ctl").display(),
        data.display()
    );
    if running_as_root() {
        format!("runuser -u {SERVER_USER} -- {pg_ctl}")
    } else {
        pg_ctl
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.owned {
            self.stop(true);
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// One server for the whole test process (started at first use; stopped and removed by a
/// watchdog when the process exits).
#[must_use]
pub fn shared() -> &'static PgServer {
    static SERVER: OnceLock<PgServer> = OnceLock::new();
    SERVER.get_or_init(|| PgServer::start().watch(std::process::id()))
}

/// A schema name no other test of this run uses (`t<pid>_<n>`).
#[must_use]
pub fn unique_schema() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Waits until `f` returns true or `timeout` passes; whether it did.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}
