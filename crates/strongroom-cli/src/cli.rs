//! The command-line grammar.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other error (a state change the key's state does not allow, a failed check, storage)
  2  usage error (bad arguments, a record key or value over the limits)
  3  not found (store, keyring, root key or record)
  4  access refused (a key is disabled, scheduled for destruction, destroyed or unavailable)
  5  integrity failure (a record, key, backup, the audit log or the key file is corrupt)
  6  backend failure (HSM, PKCS#11 module, token, login)
  7  aborted (a destructive command was not confirmed)
With --json, an error's kind field names its exit code: other, usage, not_found, access_refused,
integrity, backend, aborted.

Environment:
  STRONGROOM_DATA   data directory (instead of --data; default $XDG_DATA_HOME/strongroom,
                    else ~/.local/share/strongroom)
  STRONGROOM_ACTOR  who is acting, for the audit log (instead of --actor; default $USER)
  STRONGROOM_PIN    the PKCS#11 user PIN, when `init --pin-env STRONGROOM_PIN` was used";

/// strongroom: records encrypted at rest under keys the customer controls.
///
/// A store keeps records sealed under a hierarchy: root keys in a backend (an HSM through
/// PKCS#11, or the embedded software backend) wrap per-keyring KEKs, which wrap DEKs, which
/// seal the records. Start with `strongroom tour` to see the whole lifecycle, or
/// `strongroom init` to create a store.
#[derive(Parser, Debug)]
#[command(name = "strongroom", version, after_help = EXIT_CODES, propagate_version = true)]
pub struct Cli {
    /// The data directory holding the store [default: $XDG_DATA_HOME/strongroom, else
    /// ~/.local/share/strongroom].
    #[arg(long, global = true, env = "STRONGROOM_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Machine-readable output: one JSON document on stdout (errors too).
    #[arg(long, global = true)]
    pub json: bool,
    /// Who is acting, recorded in the audit log.
    #[arg(long, global = true, env = "STRONGROOM_ACTOR", value_name = "NAME")]
    pub actor: Option<String>,
    /// PKCS#11: log in even when the token says the next wrong PIN locks it (`FINAL_TRY`).
    /// Only with a PIN you know is right.
    #[arg(long, global = true)]
    pub allow_final_pin_try: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a store and its first root key (or adopt a key that exists in the token).
    Init(InitArgs),
    /// Root keys: the customer-managed keys in the backend.
    #[command(subcommand)]
    Root(RootCmd),
    /// Keyrings: the unit of tenancy and revocation.
    #[command(subcommand)]
    Keyring(KeyringCmd),
    /// Store a record (the value from stdin when not given; binary-safe).
    Put {
        /// The keyring.
        keyring: String,
        /// The record key (text, or hex with --key-hex).
        key: String,
        /// KEY is hex (for a key that is not text; `list --json` gives every key's hex).
        #[arg(long)]
        key_hex: bool,
        /// The value (omit to read it from stdin, which keeps it out of the process arguments
        /// that `ps` shows).
        value: Option<SecretArg>,
    },
    /// Print a record's value (raw bytes to stdout).
    Get {
        /// The keyring.
        keyring: String,
        /// The record key (text, or hex with --key-hex).
        key: String,
        /// KEY is hex (for a key that is not text; `list --json` gives every key's hex).
        #[arg(long)]
        key_hex: bool,
    },
    /// Delete a record.
    Delete {
        /// The keyring.
        keyring: String,
        /// The record key (text, or hex with --key-hex).
        key: String,
        /// KEY is hex (for a key that is not text; `list --json` gives every key's hex).
        #[arg(long)]
        key_hex: bool,
    },
    /// List record keys, one per line (control and bidirectional characters escaped; `--json`
    /// gives each key as text and as hex).
    List {
        /// The keyring.
        keyring: String,
        /// Only keys starting with this prefix.
        #[arg(long, default_value = "")]
        prefix: String,
    },
    /// Re-encrypt a keyring's records under its current DEK (resumable), then retire unused DEKs.
    Reencrypt {
        /// The keyring.
        keyring: String,
    },
    /// List work an interrupt or a crash left unfinished.
    Jobs,
    /// Finish every job an interrupt or a crash left unfinished.
    Resume,
    /// Copy the live data into a fresh database and shred the old files (runs by itself after
    /// every destruction and move; this finishes one an interruption left pending).
    Compact,
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Check the backend, the login, the root keys, the store and the audit log; print the fix
    /// for anything wrong.
    Doctor,
    /// Measure: plain sled against strongroom put/get, backend wrap/unwrap, backend calls per read.
    Bench(BenchArgs),
    /// One replica process of `bench --replicas` (internal).
    #[command(hide = true)]
    BenchReplica(BenchReplicaArgs),
    /// Walk through the whole key lifecycle in a temporary store on the embedded backend.
    Tour,
    /// Write a consistent backup of the store (everything in it stays sealed).
    Backup {
        /// The backup file to write.
        file: PathBuf,
    },
    /// Print a shell completion script (e.g. `strongroom completions bash >
    /// /etc/bash_completion.d/strongroom`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff; e.g. `strongroom man | man -l -`).
    Man,
    /// Copy the store into the other storage engine (sled <-> PostgreSQL), verify every entry,
    /// and switch strongroom.conf to it.
    Migrate(MigrateArgs),
    /// Restore a backup into the data directory (which must not hold a store).
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Write this configuration (copy the original store's `strongroom.conf`).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
}

/// A record value given on the command line (plaintext): its `Debug` never shows it, and it is
/// zeroized when dropped.
#[derive(Clone)]
pub struct SecretArg(zeroize::Zeroizing<String>);

impl SecretArg {
    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl From<String> for SecretArg {
    fn from(s: String) -> Self {
        Self(zeroize::Zeroizing::new(s))
    }
}

impl std::fmt::Debug for SecretArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[REDACTED]")
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The embedded software backend (root keys in a key file in the data directory).
    Soft,
    /// A PKCS#11 token (an HSM; SoftHSM2 for testing).
    Pkcs11,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Where root keys live.
    #[arg(long, value_enum, default_value_t = BackendKind::Soft)]
    pub backend: BackendKind,
    /// The PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
    #[arg(long, value_name = "PATH", required_if_eq("backend", "pkcs11"))]
    pub module: Option<PathBuf>,
    /// The token's label.
    #[arg(long, value_name = "LABEL", conflicts_with = "slot")]
    pub token: Option<String>,
    /// The token's slot id (instead of --token).
    #[arg(long, value_name = "ID")]
    pub slot: Option<u64>,
    /// Read the PIN from this environment variable (the PIN is never stored).
    #[arg(long, value_name = "VAR", conflicts_with = "pin_file")]
    pub pin_env: Option<String>,
    /// Read the PIN from this file (mode o-rwx; the PIN is never stored).
    #[arg(long, value_name = "FILE")]
    pub pin_file: Option<PathBuf>,
    /// Namespace of the store's labels in the token (`NAMESPACE/<root>/v<N>`). Each store on a
    /// token needs its own; the default is `strongroom-` and 8 random hex digits.
    #[arg(long, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Name of the first root key (the store's primary root, which also protects the audit log).
    #[arg(long, default_value = "service", value_name = "NAME")]
    pub root: String,
    /// Adopt this existing key in the token as the first root key instead of generating one
    /// (a label, `label:LABEL` or `id:HEX`).
    #[arg(long, value_name = "SELECTOR")]
    pub adopt_root: Option<String>,
    /// Adopt a key that was once extractable, not always sensitive, or is not a token object
    /// (recorded in the audit log). Without it such a key is refused.
    #[arg(long, requires = "adopt_root")]
    pub allow_weak_adoption: bool,
    /// Where the records live: sled in the data directory, or a PostgreSQL database that many
    /// processes and machines can reach.
    #[arg(long, value_enum, default_value_t = StorageKind::Sled)]
    pub storage: StorageKind,
    #[command(flatten)]
    pub pg: PgArgs,
}

/// Where a PostgreSQL store's URL comes from, and the schema that holds it (`init`, `migrate`).
#[derive(Args, Debug)]
pub struct PgArgs {
    /// PostgreSQL: the environment variable holding the URL
    /// (`postgres://user:password@host/db?sslmode=verify-full&sslrootcert=/path/ca.pem`);
    /// only the variable's name is written to strongroom.conf.
    #[arg(long, value_name = "VAR", conflicts_with = "pg_url_file")]
    pub pg_url_env: Option<String>,
    /// PostgreSQL: a file whose first line is the URL (mode o-rwx).
    #[arg(long, value_name = "FILE")]
    pub pg_url_file: Option<PathBuf>,
    /// PostgreSQL: the schema holding the store's tables (one store per schema).
    #[arg(long, value_name = "NAME")]
    pub pg_schema: Option<String>,
}

/// `migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// The engine to move to.
    #[arg(long, value_enum)]
    pub to: StorageKind,
    #[command(flatten)]
    pub pg: PgArgs,
    /// Once the copy is verified and in use, shred the old one (sled: its files overwritten
    /// and removed; PostgreSQL: its rows deleted and the table rewritten).
    #[arg(long)]
    pub shred_source: bool,
}

/// Where a store keeps its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StorageKind {
    /// sled, embedded in the data directory (one process on one machine).
    Sled,
    /// A PostgreSQL database.
    Postgres,
}

#[derive(Subcommand, Debug)]
pub enum RootCmd {
    /// Create a root key (version 1) in the backend.
    Create {
        /// The name.
        name: String,
        /// Adopt this existing key in the token instead of generating one (label or id:HEX).
        #[arg(long, value_name = "SELECTOR")]
        adopt: Option<String>,
        /// Adopt a key that was once extractable, not always sensitive, or is not a token
        /// object (recorded in the audit log). Without it such a key is refused.
        #[arg(long, requires = "adopt")]
        allow_weak_adoption: bool,
    },
    /// Rotate: a new version; every KEK under the old ones is rewrapped (resumable).
    Rotate {
        /// The name.
        name: String,
    },
    /// List root keys and their versions.
    List,
    /// Disable (every version): every keyring under it is refused until enabled.
    Disable {
        /// The name.
        name: String,
    },
    /// Enable again.
    Enable {
        /// The name.
        name: String,
    },
    /// Destroy an old version that nothing uses any more.
    Retire {
        /// The name.
        name: String,
        /// The version to retire (`1` or `v1`).
        #[arg(value_name = "VERSION")]
        old: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Destroy the root key and every keyring under it (after a waiting period, or now).
    Destroy {
        /// The name.
        name: String,
        #[command(flatten)]
        when: DestroyArgs,
    },
    /// Cancel a scheduled destruction (the root is left disabled).
    CancelDestroy {
        /// The name.
        name: String,
    },
}

/// When a root key or keyring is destroyed: after a waiting period, or now.
#[derive(Args, Debug)]
pub struct DestroyArgs {
    /// Waiting period (e.g. 7d, 12h); default: the store's (7 days).
    #[arg(long, value_name = "DURATION", conflicts_with = "now")]
    pub after: Option<String>,
    /// Destroy now, irreversibly.
    #[arg(long)]
    pub now: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeyringCmd {
    /// Create a keyring.
    Create {
        /// The name.
        name: String,
        /// The root key to put it under (default: the primary root).
        #[arg(long, value_name = "ROOT")]
        root: Option<String>,
    },
    /// List keyrings.
    List,
    /// Show a keyring: state, root, key versions, records.
    Show {
        /// The name.
        name: String,
    },
    /// Rotate the KEK (default; no record is touched) or the DEK.
    Rotate {
        /// The name.
        name: String,
        /// Rotate the KEK (the default).
        #[arg(long, conflicts_with = "dek")]
        kek: bool,
        /// Rotate the DEK (new records use it; `reencrypt` moves old ones).
        #[arg(long)]
        dek: bool,
    },
    /// Move to another root key: a fresh KEK under it and a fresh DEK, every record
    /// re-encrypted (resumable; reads and writes go on), then the old keys erased and the
    /// database compacted, so that nothing of it depends on the old root any more.
    Move {
        /// The name.
        name: String,
        /// The root key to move it under.
        #[arg(long, value_name = "ROOT")]
        root: String,
    },
    /// Disable: reads and writes refused until enabled.
    Disable {
        /// The name.
        name: String,
    },
    /// Enable again.
    Enable {
        /// The name.
        name: String,
    },
    /// Destroy (after a waiting period, or now): its keys and records are erased and the
    /// database's files rewritten without them. Older backups still hold them while its root
    /// lives; destroy the root to shred those.
    Destroy {
        /// The name.
        name: String,
        #[command(flatten)]
        when: DestroyArgs,
    },
    /// Cancel a scheduled destruction (the keyring is left disabled).
    CancelDestroy {
        /// The name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Verify the whole chain; exit 5 naming the first broken entry.
    Verify,
    /// Print entries.
    Log {
        /// From this sequence number, or this time (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ), on.
        #[arg(long, default_value = "1", value_name = "SEQ|TIME")]
        since: String,
        /// At most this many entries.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Accept a database that is older than its audit anchor, or has lost it (after putting an
    /// older copy in place on purpose): recorded in the audit log, and the anchor written anew.
    AcceptRollback {
        /// Do not ask (needed when not on a terminal).
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Records per phase.
    #[arg(long, default_value_t = 20_000)]
    pub records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Measure the PostgreSQL engine against a plain table on the same server instead (with 1
    /// and 4 client threads; needs --pg-url-env or --pg-url-file).
    #[arg(long, value_enum, default_value_t = StorageKind::Sled)]
    pub storage: StorageKind,
    /// PostgreSQL: the environment variable holding the URL of a database the benchmark may
    /// create two schemas in (`<schema>_bench_store`, `<schema>_bench_plain`).
    #[arg(long, value_name = "VAR", conflicts_with = "pg_url_file")]
    pub pg_url_env: Option<String>,
    /// PostgreSQL: a file whose first line is the URL.
    #[arg(long, value_name = "FILE")]
    pub pg_url_file: Option<PathBuf>,
    /// Measure a fleet instead: this many replica processes on one PostgreSQL store (schema
    /// `<schema>_bench_fleet`, emptied first) and one backend, doing puts and gets, while
    /// this process disables and enables a keyring: reports throughput per replica and in
    /// total, and how long each disable took to reach each replica (needs --pg-url-env or
    /// --pg-url-file).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub replicas: Option<u16>,
    /// With --replicas: how long the replicas run, at least (seconds).
    #[arg(long, default_value_t = 10, requires = "replicas")]
    pub seconds: u64,
    /// With --replicas: disable/enable rounds measured.
    #[arg(long, default_value_t = 5, requires = "replicas", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// With --replicas: each replica's fleet poll interval in milliseconds (the bound the
    /// propagation is measured against).
    #[arg(long, default_value_t = 1000, requires = "replicas")]
    pub fleet_poll_ms: u64,
    /// With --replicas: the fleet's one backend is this PKCS#11 module's token (a token for
    /// testing: the bench makes a root key there, in a namespace of its own, and leaves it);
    /// without it, a soft key file every replica shares.
    #[arg(long, value_name = "PATH", requires_all = ["replicas", "pkcs11_token", "pkcs11_pin_file"])]
    pub pkcs11_module: Option<PathBuf>,
    /// With --pkcs11-module: the token's label.
    #[arg(long, value_name = "LABEL", requires = "pkcs11_module")]
    pub pkcs11_token: Option<String>,
    /// With --pkcs11-module: a file holding the token's user PIN.
    #[arg(long, value_name = "FILE", requires = "pkcs11_module")]
    pub pkcs11_pin_file: Option<PathBuf>,
}

/// One replica process of `bench --replicas` (started by it; not for use by hand).
#[derive(Args, Debug)]
pub struct BenchReplicaArgs {
    /// The store's local directory (its soft backend key file).
    #[arg(long)]
    pub store_dir: PathBuf,
    /// The environment variable holding the URL.
    #[arg(long, value_name = "VAR")]
    pub pg_url_env: Option<String>,
    /// A file whose first line is the URL.
    #[arg(long, value_name = "FILE")]
    pub pg_url_file: Option<PathBuf>,
    /// The store's schema.
    #[arg(long)]
    pub schema: String,
    /// This replica's number.
    #[arg(long)]
    pub index: u16,
    /// Fleet poll interval in milliseconds.
    #[arg(long)]
    pub fleet_poll_ms: u64,
    /// Value size in bytes.
    #[arg(long)]
    pub value_size: usize,
    /// The fleet's PKCS#11 module (else the soft key file in the store directory).
    #[arg(long, requires_all = ["pkcs11_token", "pkcs11_pin_file", "pkcs11_namespace"])]
    pub pkcs11_module: Option<PathBuf>,
    /// The token's label.
    #[arg(long)]
    pub pkcs11_token: Option<String>,
    /// The PIN file.
    #[arg(long)]
    pub pkcs11_pin_file: Option<PathBuf>,
    /// The bench's namespace in the token.
    #[arg(long)]
    pub pkcs11_namespace: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    #[test]
    fn debug_never_shows_a_put_value() {
        let cli = Cli::try_parse_from(["strongroom", "put", "payroll", "alice", "salary=s3cret"])
            .unwrap();
        let shown = format!("{cli:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("[REDACTED]") && shown.contains("alice"),
            "{shown}"
        );
        let shown = format!("{cli:#?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        // The value itself still reaches the command.
        match &cli.cmd {
            Cmd::Put { value: Some(v), .. } => assert_eq!(v.as_bytes(), b"salary=s3cret"),
            other => panic!("{other:?}"),
        }
        let cli = Cli::try_parse_from(["strongroom", "put", "payroll", "alice"]).unwrap();
        assert!(matches!(cli.cmd, Cmd::Put { value: None, .. }));
    }
}
