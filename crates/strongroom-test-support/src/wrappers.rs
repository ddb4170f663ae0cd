//! Backend wrappers for tests: one that counts calls, runs hooks and whose failures a test
//! switches on, one that is slow.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use strongroom_core::backend::{BackendInfo, HealthCheck, ImportKey, RootKeyInfo};
use strongroom_core::{Backend, BackendError, Key256, RootKeyId, WrappedKey};

/// Forwards to a backend, counting calls and able to fail wrap/unwrap, the lifecycle calls, or
/// every call that reaches the device, with a device error on demand (an HSM that went away);
/// hooks run before some calls; [`TestBackend::keeping_anchors`] keeps the audit anchors itself
/// (as an HSM does) over a backend that does not.
pub struct TestBackend {
    inner: Arc<dyn Backend>,
    calls: AtomicU64,
    unwraps: AtomicU64,
    down: AtomicBool,
    admin_down: AtomicBool,
    device_down: AtomicBool,
    anchor_writes: AtomicU64,
    before_claim: Mutex<Option<Hook>>,
    before_wrap: Mutex<Option<Hook>>,
    before_anchor: Mutex<Option<Hook>>,
    /// The anchors kept here (`None`: forwarded).
    anchors: Option<Mutex<Vec<Vec<u8>>>>,
}

/// What runs before every `set_store_claim`, `wrap` or `put_audit_anchor`.
type Hook = Arc<dyn Fn() + Send + Sync>;

/// Runs the hook in `slot`, if any (cloned out of the lock: the hook may call the store, which
/// may call the backend again).
fn run_hook(slot: &Mutex<Option<Hook>>) {
    let hook = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    if let Some(hook) = hook {
        hook();
    }
}

fn set_hook(slot: &Mutex<Option<Hook>>, hook: Option<Hook>) {
    *slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = hook;
}

impl TestBackend {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Backend>) -> Arc<Self> {
        Self::with(inner, None)
    }

    /// Wraps `inner`, keeping the audit anchors in memory instead of forwarding them: a store
    /// on a shared engine then anchors in the backend (and `before_anchor` runs right after
    /// each key change's commit).
    pub fn keeping_anchors(inner: Arc<dyn Backend>) -> Arc<Self> {
        Self::with(inner, Some(Mutex::new(Vec::new())))
    }

    fn with(inner: Arc<dyn Backend>, anchors: Option<Mutex<Vec<Vec<u8>>>>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            calls: AtomicU64::new(0),
            unwraps: AtomicU64::new(0),
            down: AtomicBool::new(false),
            admin_down: AtomicBool::new(false),
            device_down: AtomicBool::new(false),
            anchor_writes: AtomicU64::new(0),
            before_claim: Mutex::new(None),
            before_wrap: Mutex::new(None),
            before_anchor: Mutex::new(None),
            anchors,
        })
    }

    /// Runs `hook` at the start of every `set_store_claim` (for example a barrier that holds two
    /// concurrent inits at the claim).
    pub fn before_claim(&self, hook: impl Fn() + Send + Sync + 'static) {
        set_hook(&self.before_claim, Some(Arc::new(hook)));
    }

    /// Runs `hook` at the start of every `wrap` (for example another replica's key change, made
    /// between a step's look at the key states and its commit), or no longer (`None`).
    pub fn before_wrap(&self, hook: Option<Box<dyn Fn() + Send + Sync>>) {
        set_hook(&self.before_wrap, hook.map(Arc::from));
    }

    /// Runs `hook` at the start of every `put_audit_anchor`, or no longer (`None`): a store
    /// writes its anchor right after each key change's commit, before the operation's next
    /// commit (for example another replica's key change between the two).
    pub fn before_anchor(&self, hook: Option<Box<dyn Fn() + Send + Sync>>) {
        set_hook(&self.before_anchor, hook.map(Arc::from));
    }

    /// Calls of `wrap` and `unwrap` so far.
    pub fn crypto_calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Calls of `put_audit_anchor` so far.
    pub fn anchor_writes(&self) -> u64 {
        self.anchor_writes.load(Ordering::SeqCst)
    }

    /// Calls of `unwrap` so far.
    pub fn unwraps(&self) -> u64 {
        self.unwraps.load(Ordering::SeqCst)
    }

    /// Makes `wrap` and `unwrap` fail with a device error (`true`) or work again (`false`).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Makes `disable_root`, `enable_root` and `destroy_root` fail with a device error (`true`)
    /// or work again (`false`).
    pub fn set_admin_down(&self, down: bool) {
        self.admin_down.store(down, Ordering::SeqCst);
    }

    /// Makes every call that reaches the device fail with a device error (`true`) or work again
    /// (`false`): the health check, listing and finding roots, wrap and unwrap, generating, the
    /// lifecycle calls and the audit anchor's reads and writes.
    pub fn set_device_down(&self, down: bool) {
        self.device_down.store(down, Ordering::SeqCst);
    }

    fn device_gate(&self) -> Result<(), BackendError> {
        switched_off(&self.device_down, "the test switched the HSM off")
    }

    fn admin_gate(&self) -> Result<(), BackendError> {
        self.device_gate()?;
        switched_off(
            &self.admin_down,
            "the test switched the backend's lifecycle calls off",
        )
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<dyn Backend> {
        &self.inner
    }

    fn gate(&self) -> Result<(), BackendError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.device_gate()?;
        switched_off(&self.down, "the test switched the backend off")
    }
}

/// A device error saying `detail` while `flag` is set.
fn switched_off(flag: &AtomicBool, detail: &str) -> Result<(), BackendError> {
    if flag.load(Ordering::SeqCst) {
        return Err(BackendError::Device {
            operation: "test",
            detail: detail.into(),
            source: None,
        });
    }
    Ok(())
}

impl Backend for TestBackend {
    fn describe(&self) -> BackendInfo {
        self.inner.describe()
    }
    fn health(&self) -> Result<Vec<HealthCheck>, BackendError> {
        self.device_gate()?;
        self.inner.health()
    }
    fn list_roots(&self) -> Result<Vec<RootKeyInfo>, BackendError> {
        self.device_gate()?;
        self.inner.list_roots()
    }
    fn find_root(&self, id: &RootKeyId) -> Result<Option<RootKeyInfo>, BackendError> {
        self.device_gate()?;
        self.inner.find_root(id)
    }
    fn wrap(
        &self,
        root: &RootKeyId,
        key: &Key256,
        context: &[u8],
    ) -> Result<WrappedKey, BackendError> {
        run_hook(&self.before_wrap);
        self.gate()?;
        self.inner.wrap(root, key, context)
    }
    fn unwrap(&self, blob: &WrappedKey, context: &[u8]) -> Result<Key256, BackendError> {
        self.gate()?;
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        self.inner.unwrap(blob, context)
    }
    fn generate_root(&self, id: &RootKeyId) -> Result<RootKeyInfo, BackendError> {
        self.device_gate()?;
        self.inner.generate_root(id)
    }
    fn import_root(&self, id: &RootKeyId, material: &Key256) -> Result<RootKeyInfo, BackendError> {
        self.inner.import_root(id, material)
    }
    fn import_key(&self) -> Result<ImportKey, BackendError> {
        self.inner.import_key()
    }
    fn import_wrapped_root(
        &self,
        id: &RootKeyId,
        wrapped: &[u8],
        check_value: &[u8; 3],
    ) -> Result<RootKeyInfo, BackendError> {
        self.inner.import_wrapped_root(id, wrapped, check_value)
    }
    fn adopt_root(&self, id: &RootKeyId, selector: &str) -> Result<RootKeyInfo, BackendError> {
        self.inner.adopt_root(id, selector)
    }
    fn disable_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.admin_gate()?;
        self.inner.disable_root(id)
    }
    fn enable_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.admin_gate()?;
        self.inner.enable_root(id)
    }
    fn destroy_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.admin_gate()?;
        self.inner.destroy_root(id)
    }
    fn audit_anchors(&self) -> Result<Vec<Vec<u8>>, BackendError> {
        self.device_gate()?;
        match &self.anchors {
            Some(kept) => Ok(kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()),
            None => self.inner.audit_anchors(),
        }
    }
    fn put_audit_anchor(&self, anchor: &[u8], replacing: &[Vec<u8>]) -> Result<(), BackendError> {
        run_hook(&self.before_anchor);
        self.device_gate()?;
        self.anchor_writes.fetch_add(1, Ordering::SeqCst);
        match &self.anchors {
            Some(kept) => {
                let mut kept = kept
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                kept.retain(|a| !replacing.contains(a));
                kept.push(anchor.to_vec());
                Ok(())
            }
            None => self.inner.put_audit_anchor(anchor, replacing),
        }
    }
    fn store_claim(&self) -> Result<Option<strongroom_core::StoreClaim>, BackendError> {
        self.inner.store_claim()
    }
    fn set_store_claim(
        &self,
        claim: &strongroom_core::StoreClaim,
        replacing: Option<&strongroom_core::StoreClaim>,
    ) -> Result<(), BackendError> {
        run_hook(&self.before_claim);
        self.admin_gate()?;
        self.inner.set_store_claim(claim, replacing)
    }
}

/// Forwards to a backend, sleeping `delay` in every `wrap` and `unwrap` (an HSM far away or
/// busy), and counting those calls and the most that ran at once.
pub struct SlowBackend {
    inner: Arc<dyn Backend>,
    delay: std::time::Duration,
    calls: AtomicU64,
    running: AtomicU64,
    most_at_once: AtomicU64,
}

impl SlowBackend {
    /// Wraps `inner`, each wrap and unwrap taking `delay` longer.
    pub fn new(inner: Arc<dyn Backend>, delay: std::time::Duration) -> Arc<Self> {
        Arc::new(Self {
            inner,
            delay,
            calls: AtomicU64::new(0),
            running: AtomicU64::new(0),
            most_at_once: AtomicU64::new(0),
        })
    }

    /// Calls of `wrap` and `unwrap` so far.
    pub fn crypto_calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The most `wrap` and `unwrap` calls that were running at the same moment.
    pub fn most_at_once(&self) -> u64 {
        self.most_at_once.load(Ordering::SeqCst)
    }

    fn slowly<T>(&self, f: impl FnOnce() -> T) -> T {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        let r = f();
        self.running.fetch_sub(1, Ordering::SeqCst);
        r
    }
}

impl Backend for SlowBackend {
    fn describe(&self) -> BackendInfo {
        self.inner.describe()
    }
    fn health(&self) -> Result<Vec<HealthCheck>, BackendError> {
        self.inner.health()
    }
    fn list_roots(&self) -> Result<Vec<RootKeyInfo>, BackendError> {
        self.inner.list_roots()
    }
    fn find_root(&self, id: &RootKeyId) -> Result<Option<RootKeyInfo>, BackendError> {
        self.inner.find_root(id)
    }
    fn wrap(
        &self,
        root: &RootKeyId,
        key: &Key256,
        context: &[u8],
    ) -> Result<WrappedKey, BackendError> {
        self.slowly(|| self.inner.wrap(root, key, context))
    }
    fn unwrap(&self, blob: &WrappedKey, context: &[u8]) -> Result<Key256, BackendError> {
        self.slowly(|| self.inner.unwrap(blob, context))
    }
    fn generate_root(&self, id: &RootKeyId) -> Result<RootKeyInfo, BackendError> {
        self.inner.generate_root(id)
    }
    fn import_root(&self, id: &RootKeyId, material: &Key256) -> Result<RootKeyInfo, BackendError> {
        self.inner.import_root(id, material)
    }
    fn import_key(&self) -> Result<ImportKey, BackendError> {
        self.inner.import_key()
    }
    fn import_wrapped_root(
        &self,
        id: &RootKeyId,
        wrapped: &[u8],
        check_value: &[u8; 3],
    ) -> Result<RootKeyInfo, BackendError> {
        self.inner.import_wrapped_root(id, wrapped, check_value)
    }
    fn adopt_root(&self, id: &RootKeyId, selector: &str) -> Result<RootKeyInfo, BackendError> {
        self.inner.adopt_root(id, selector)
    }
    fn disable_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.inner.disable_root(id)
    }
    fn enable_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.inner.enable_root(id)
    }
    fn destroy_root(&self, id: &RootKeyId) -> Result<(), BackendError> {
        self.inner.destroy_root(id)
    }
    fn audit_anchors(&self) -> Result<Vec<Vec<u8>>, BackendError> {
        self.inner.audit_anchors()
    }
    fn put_audit_anchor(&self, anchor: &[u8], replacing: &[Vec<u8>]) -> Result<(), BackendError> {
        self.inner.put_audit_anchor(anchor, replacing)
    }
    fn store_claim(&self) -> Result<Option<strongroom_core::StoreClaim>, BackendError> {
        self.inner.store_claim()
    }
    fn set_store_claim(
        &self,
        claim: &strongroom_core::StoreClaim,
        replacing: Option<&strongroom_core::StoreClaim>,
    ) -> Result<(), BackendError> {
        self.inner.set_store_claim(claim, replacing)
    }
}
