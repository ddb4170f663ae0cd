//! The fault plan and its text form (the control file), shared by the module and the tests.

use std::fmt;
use std::time::Duration;

use cryptoki_sys::*;

/// One kind of fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Return this code instead of calling the real function.
    Fail(CK_RV),
    /// Call the real function, then return this code: the device did the work and the answer
    /// was lost (what makes blind retries of non-idempotent calls dangerous).
    LoseReply(CK_RV),
    /// The token is pulled out of its slot (see the crate docs).
    TokenPulled,
    /// One `CKR_DEVICE_ERROR`, then every session returns `CKR_SESSION_HANDLE_INVALID` until
    /// `C_Finalize` (see the crate docs).
    StuckAfterDeviceError,
    /// Sleep this long before forwarding the call.
    Latency(Duration),
    /// `C_OpenSession` returns `CKR_SESSION_COUNT` while this many sessions are open.
    SessionCap {
        /// Most sessions open at once.
        max: u64,
        /// Also report the cap as the token's `ulMaxSessionCount` in `C_GetTokenInfo`.
        advertised: bool,
    },
    /// Token personality: call the real function, and when it returns `from`, return `to`
    /// (e.g. a tampered blob as `CKR_DEVICE_ERROR`, a deleted key as `CKR_GENERAL_ERROR`).
    Remap {
        /// The real module's code.
        from: CK_RV,
        /// The code the caller gets instead.
        to: CK_RV,
    },
    /// Token personality: `C_GetMechanismList` leaves this mechanism out, and
    /// `C_GetMechanismInfo` calls it `CKR_MECHANISM_INVALID` (the token may still accept it).
    HideMechanism(CK_MECHANISM_TYPE),
    /// Token personality: `C_GetMechanismList` lists this mechanism too (e.g. `0x210B`, KWP
    /// under its PKCS#11 3.0 code).
    ListMechanism(CK_MECHANISM_TYPE),
    /// Token personality: `C_EncryptInit`, `C_DecryptInit`, `C_WrapKey`, `C_UnwrapKey` and
    /// `C_GenerateKey` with this mechanism return `CKR_MECHANISM_INVALID`.
    RefuseMechanism(CK_MECHANISM_TYPE),
    /// Token personality: calls with mechanism `from` (`C_EncryptInit`, `C_DecryptInit`,
    /// `C_WrapKey`, `C_UnwrapKey`, `C_GenerateKey`, `C_GetMechanismInfo`) go to the real module
    /// with `to` instead: a code the real module does not know made to work, e.g.
    /// `CKM_AES_KEY_WRAP_KWP` (0x210B) as SoftHSM2's `CKM_AES_KEY_WRAP_PAD` (0x210A), the same
    /// algorithm. A translated call under a key whose `CKA_ALLOWED_MECHANISMS` is non-empty and
    /// lacks `from` is refused with `CKR_MECHANISM_INVALID`, as a token that knows `from` would
    /// refuse it (counted as `refuse-mechanism`).
    TranslateMechanism {
        /// The code the caller uses.
        from: CK_MECHANISM_TYPE,
        /// The code the real module gets.
        to: CK_MECHANISM_TYPE,
    },
    /// `C_GetTokenInfo` reports these flags set, on top of the real ones (e.g.
    /// `CKF_USER_PIN_FINAL_TRY`).
    TokenFlags(CK_FLAGS),
    /// `C_GetTokenInfo` reports this `ulMaxRwSessionCount` (the session limit stays the
    /// token's), as tokens that allow fewer read-write than read-only sessions do.
    RwSessionLimit(CK_ULONG),
}

/// A fault, the functions it applies to, and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The fault.
    pub fault: Fault,
    /// The PKCS#11 functions it applies to (`C_Decrypt`, ...); empty means every function that
    /// names a session.
    pub functions: Vec<String>,
    /// Inject this many times, then stop; `None` is unlimited (until the plan changes). For
    /// [`Fault::StuckAfterDeviceError`] it counts device errors and defaults to 1.
    pub times: Option<u64>,
}

impl Rule {
    /// Whether the rule applies to a call of `function`, which names a session or not.
    #[must_use]
    pub fn applies_to(&self, function: &str, names_session: bool) -> bool {
        if self.functions.is_empty() {
            names_session
        } else {
            self.functions.iter().any(|f| f == function)
        }
    }
}

/// A set of faults: what the module injects while the control file holds it.
///
/// Built with chained calls; [`FaultPlan::on`] and [`FaultPlan::times`] refine the rule added
/// last:
///
/// ```
/// use strongroom_p11_testkit::{FaultPlan, sys};
/// let plan = FaultPlan::new()
///     .fail(sys::CKR_GENERAL_ERROR).on(&["C_Decrypt"]).times(1)
///     .latency_ms(20);
/// assert_eq!(plan.to_string(), "fail CKR_GENERAL_ERROR on C_Decrypt times 1\nlatency 20ms\n");
/// assert_eq!(plan.to_string().parse::<FaultPlan>().unwrap(), plan);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    rules: Vec<Rule>,
}

impl FaultPlan {
    /// No faults.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The rules, in order.
    #[must_use]
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    fn push(mut self, fault: Fault) -> Self {
        self.rules.push(Rule {
            fault,
            functions: Vec::new(),
            times: None,
        });
        self
    }

    /// Return `rv` instead of calling.
    #[must_use]
    pub fn fail(self, rv: CK_RV) -> Self {
        self.push(Fault::Fail(rv))
    }

    /// Call the real function, then return `rv` (the reply is lost).
    #[must_use]
    pub fn lose_reply(self, rv: CK_RV) -> Self {
        self.push(Fault::LoseReply(rv))
    }

    /// Pull the token.
    #[must_use]
    pub fn token_pulled(self) -> Self {
        self.push(Fault::TokenPulled)
    }

    /// One device error, then stuck sessions until `C_Finalize`.
    #[must_use]
    pub fn stuck_after_device_error(self) -> Self {
        self.push(Fault::StuckAfterDeviceError)
    }

    /// Add `ms` milliseconds before each call.
    #[must_use]
    pub fn latency_ms(self, ms: u64) -> Self {
        self.push(Fault::Latency(Duration::from_millis(ms)))
    }

    /// Refuse `C_OpenSession` beyond `max` open sessions, without telling (the token info keeps
    /// its own limit, as when other applications hold the rest of the sessions).
    #[must_use]
    pub fn session_cap(self, max: u64) -> Self {
        self.push(Fault::SessionCap {
            max,
            advertised: false,
        })
    }

    /// Refuse `C_OpenSession` beyond `max` open sessions, and report `max` in the token info.
    #[must_use]
    pub fn advertised_session_cap(self, max: u64) -> Self {
        self.push(Fault::SessionCap {
            max,
            advertised: true,
        })
    }

    /// Token personality: return `to` whenever the real module returns `from`.
    #[must_use]
    pub fn remap(self, from: CK_RV, to: CK_RV) -> Self {
        self.push(Fault::Remap { from, to })
    }

    /// Token personality: leave `mechanism` out of the mechanism list.
    #[must_use]
    pub fn hide_mechanism(self, mechanism: CK_MECHANISM_TYPE) -> Self {
        self.push(Fault::HideMechanism(mechanism))
    }

    /// Token personality: list `mechanism` too.
    #[must_use]
    pub fn list_mechanism(self, mechanism: CK_MECHANISM_TYPE) -> Self {
        self.push(Fault::ListMechanism(mechanism))
    }

    /// Token personality: refuse calls with `mechanism` (`CKR_MECHANISM_INVALID`).
    #[must_use]
    pub fn refuse_mechanism(self, mechanism: CK_MECHANISM_TYPE) -> Self {
        self.push(Fault::RefuseMechanism(mechanism))
    }

    /// Token personality: forward calls with mechanism `from` as `to` (see
    /// [`Fault::TranslateMechanism`]).
    #[must_use]
    pub fn translate_mechanism(self, from: CK_MECHANISM_TYPE, to: CK_MECHANISM_TYPE) -> Self {
        self.push(Fault::TranslateMechanism { from, to })
    }

    /// Token personality: a token that offers RFC 5649 key wrap only under its PKCS#11 3.0 code
    /// `CKM_AES_KEY_WRAP_KWP` (0x210B), which `cryptoki` 0.12 neither lists nor calls: the
    /// mechanism list shows 0x210B instead of 0x210A, calls with 0x210A are refused
    /// (`CKR_MECHANISM_INVALID`), and calls with 0x210B go to SoftHSM2 as 0x210A (SoftHSM2
    /// implements RFC 5649 only under 0x210A).
    #[must_use]
    pub fn kwp_only_as_0x210b(self) -> Self {
        self.hide_mechanism(CKM_AES_KEY_WRAP_PAD)
            .list_mechanism(CKM_AES_KEY_WRAP_KWP)
            .refuse_mechanism(CKM_AES_KEY_WRAP_PAD)
            .translate_mechanism(CKM_AES_KEY_WRAP_KWP, CKM_AES_KEY_WRAP_PAD)
    }

    /// Report these token flags as set in `C_GetTokenInfo`.
    #[must_use]
    pub fn token_flags(self, flags: CK_FLAGS) -> Self {
        self.push(Fault::TokenFlags(flags))
    }

    /// Report `max` as the token's `ulMaxRwSessionCount`.
    #[must_use]
    pub fn rw_session_limit(self, max: CK_ULONG) -> Self {
        self.push(Fault::RwSessionLimit(max))
    }

    /// Adds every rule of `other` after these.
    #[must_use]
    pub fn and(mut self, other: &FaultPlan) -> Self {
        self.rules.extend(other.rules.iter().cloned());
        self
    }

    /// Limit the last rule to these functions.
    ///
    /// # Panics
    /// If the plan has no rule yet, or a name is not a `C_` function name.
    #[must_use]
    pub fn on(mut self, functions: &[&str]) -> Self {
        assert!(
            functions.iter().all(|f| valid_function(f)),
            "function names look like C_Decrypt: {functions:?}"
        );
        self.last().functions = functions.iter().map(|f| (*f).to_owned()).collect();
        self
    }

    /// Limit the last rule to `n` injections.
    ///
    /// # Panics
    /// If the plan has no rule yet.
    #[must_use]
    pub fn times(mut self, n: u64) -> Self {
        self.last().times = Some(n);
        self
    }

    fn last(&mut self) -> &mut Rule {
        self.rules
            .last_mut()
            .unwrap_or_else(|| panic!("add a fault before refining it"))
    }
}

fn valid_function(f: &str) -> bool {
    f.starts_with("C_") && f.len() > 2 && f.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl fmt::Display for FaultPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.rules {
            match &r.fault {
                Fault::Fail(rv) => write!(f, "fail {}", ckr_name(*rv))?,
                Fault::LoseReply(rv) => write!(f, "lose-reply {}", ckr_name(*rv))?,
                Fault::TokenPulled => f.write_str("token-pulled")?,
                Fault::StuckAfterDeviceError => f.write_str("stuck-after-device-error")?,
                Fault::Latency(d) => write!(f, "latency {}ms", d.as_millis())?,
                Fault::SessionCap { max, advertised } => {
                    write!(f, "session-cap {max}")?;
                    if *advertised {
                        f.write_str(" advertised")?;
                    }
                }
                Fault::Remap { from, to } => {
                    write!(f, "remap {} {}", ckr_name(*from), ckr_name(*to))?;
                }
                Fault::HideMechanism(m) => write!(f, "hide-mechanism 0x{m:X}")?,
                Fault::ListMechanism(m) => write!(f, "list-mechanism 0x{m:X}")?,
                Fault::RefuseMechanism(m) => write!(f, "refuse-mechanism 0x{m:X}")?,
                Fault::TranslateMechanism { from, to } => {
                    write!(f, "translate-mechanism 0x{from:X} 0x{to:X}")?;
                }
                Fault::TokenFlags(flags) => write!(f, "token-flags 0x{flags:X}")?,
                Fault::RwSessionLimit(max) => write!(f, "rw-session-limit {max}")?,
            }
            if !r.functions.is_empty() {
                write!(f, " on {}", r.functions.join(","))?;
            }
            if let Some(n) = r.times {
                write!(f, " times {n}")?;
            }
            f.write_str("\n")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for FaultPlan {
    type Err = String;

    /// Parses the control-file format (see the crate docs).
    fn from_str(text: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            rules.push(parse_rule(line).map_err(|e| format!("line {}: {e}: {line:?}", n + 1))?);
        }
        Ok(Self { rules })
    }
}

fn parse_rule(line: &str) -> Result<Rule, String> {
    let mut words = line.split_whitespace();
    let kind = words.next().ok_or("empty rule")?;
    let mut arg = || {
        words
            .next()
            .ok_or_else(|| format!("{kind} needs an argument"))
    };
    let mut fault = match kind {
        "fail" => Fault::Fail(parse_ckr(arg()?)?),
        "lose-reply" => Fault::LoseReply(parse_ckr(arg()?)?),
        "token-pulled" => Fault::TokenPulled,
        "stuck-after-device-error" => Fault::StuckAfterDeviceError,
        "latency" => {
            let a = arg()?;
            let ms = a.strip_suffix("ms").unwrap_or(a);
            Fault::Latency(Duration::from_millis(
                ms.parse().map_err(|_| format!("bad latency {a:?}"))?,
            ))
        }
        "session-cap" => {
            let a = arg()?;
            Fault::SessionCap {
                max: a.parse().map_err(|_| format!("bad session cap {a:?}"))?,
                advertised: false,
            }
        }
        "remap" => {
            let from = parse_ckr(arg()?)?;
            let to = parse_ckr(arg()?)?;
            Fault::Remap { from, to }
        }
        "hide-mechanism" => Fault::HideMechanism(parse_number(arg()?)?),
        "list-mechanism" => Fault::ListMechanism(parse_number(arg()?)?),
        "refuse-mechanism" => Fault::RefuseMechanism(parse_number(arg()?)?),
        "translate-mechanism" => {
            let from = parse_number(arg()?)?;
            let to = parse_number(arg()?)?;
            Fault::TranslateMechanism { from, to }
        }
        "token-flags" => Fault::TokenFlags(parse_number(arg()?)?),
        "rw-session-limit" => Fault::RwSessionLimit(parse_number(arg()?)?),
        other => return Err(format!("unknown fault {other:?}")),
    };
    let mut rule_functions = Vec::new();
    let mut times = None;
    while let Some(w) = words.next() {
        match w {
            "on" => {
                let list = words.next().ok_or("`on` needs function names")?;
                for f in list.split(',') {
                    if !valid_function(f) {
                        return Err(format!("bad function name {f:?}"));
                    }
                    rule_functions.push(f.to_owned());
                }
            }
            "times" => {
                let n = words.next().ok_or("`times` needs a count")?;
                times = Some(n.parse().map_err(|_| format!("bad count {n:?}"))?);
            }
            "advertised" => match &mut fault {
                Fault::SessionCap { advertised, .. } => *advertised = true,
                _ => return Err("only session-cap can be advertised".into()),
            },
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    Ok(Rule {
        fault,
        functions: rule_functions,
        times,
    })
}

/// Parses `0x210B` or `8459`.
fn parse_number(s: &str) -> Result<CK_ULONG, String> {
    match s.strip_prefix("0x") {
        Some(hex) => CK_ULONG::from_str_radix(hex, 16),
        None => s.parse(),
    }
    .map_err(|_| format!("bad number {s:?}"))
}

/// Parses `CKR_DEVICE_ERROR`, `0x30` or `48`.
fn parse_ckr(s: &str) -> Result<CK_RV, String> {
    if let Some(&(_, rv)) = CKR_NAMES.iter().find(|(n, _)| *n == s) {
        return Ok(rv);
    }
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => CK_RV::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("unknown return code {s:?}"))
}

/// The `CKR_...` name of a return code, or its hex value.
#[must_use]
pub fn ckr_name(rv: CK_RV) -> String {
    CKR_NAMES
        .iter()
        .find(|(_, v)| *v == rv)
        .map_or_else(|| format!("0x{rv:X}"), |(n, _)| (*n).to_owned())
}

const CKR_NAMES: &[(&str, CK_RV)] = &[
    ("CKR_OK", CKR_OK),
    ("CKR_CANCEL", CKR_CANCEL),
    ("CKR_HOST_MEMORY", CKR_HOST_MEMORY),
    ("CKR_SLOT_ID_INVALID", CKR_SLOT_ID_INVALID),
    ("CKR_GENERAL_ERROR", CKR_GENERAL_ERROR),
    ("CKR_FUNCTION_FAILED", CKR_FUNCTION_FAILED),
    ("CKR_ARGUMENTS_BAD", CKR_ARGUMENTS_BAD),
    ("CKR_NO_EVENT", CKR_NO_EVENT),
    ("CKR_NEED_TO_CREATE_THREADS", CKR_NEED_TO_CREATE_THREADS),
    ("CKR_CANT_LOCK", CKR_CANT_LOCK),
    ("CKR_ATTRIBUTE_READ_ONLY", CKR_ATTRIBUTE_READ_ONLY),
    ("CKR_ATTRIBUTE_SENSITIVE", CKR_ATTRIBUTE_SENSITIVE),
    ("CKR_ATTRIBUTE_TYPE_INVALID", CKR_ATTRIBUTE_TYPE_INVALID),
    ("CKR_ATTRIBUTE_VALUE_INVALID", CKR_ATTRIBUTE_VALUE_INVALID),
    ("CKR_ACTION_PROHIBITED", CKR_ACTION_PROHIBITED),
    ("CKR_DATA_INVALID", CKR_DATA_INVALID),
    ("CKR_DATA_LEN_RANGE", CKR_DATA_LEN_RANGE),
    ("CKR_DEVICE_ERROR", CKR_DEVICE_ERROR),
    ("CKR_DEVICE_MEMORY", CKR_DEVICE_MEMORY),
    ("CKR_DEVICE_REMOVED", CKR_DEVICE_REMOVED),
    ("CKR_ENCRYPTED_DATA_INVALID", CKR_ENCRYPTED_DATA_INVALID),
    ("CKR_ENCRYPTED_DATA_LEN_RANGE", CKR_ENCRYPTED_DATA_LEN_RANGE),
    ("CKR_AEAD_DECRYPT_FAILED", CKR_AEAD_DECRYPT_FAILED),
    ("CKR_FUNCTION_CANCELED", CKR_FUNCTION_CANCELED),
    ("CKR_FUNCTION_NOT_PARALLEL", CKR_FUNCTION_NOT_PARALLEL),
    ("CKR_FUNCTION_NOT_SUPPORTED", CKR_FUNCTION_NOT_SUPPORTED),
    ("CKR_KEY_HANDLE_INVALID", CKR_KEY_HANDLE_INVALID),
    ("CKR_KEY_SIZE_RANGE", CKR_KEY_SIZE_RANGE),
    ("CKR_KEY_TYPE_INCONSISTENT", CKR_KEY_TYPE_INCONSISTENT),
    ("CKR_KEY_NOT_NEEDED", CKR_KEY_NOT_NEEDED),
    ("CKR_KEY_CHANGED", CKR_KEY_CHANGED),
    ("CKR_KEY_NEEDED", CKR_KEY_NEEDED),
    ("CKR_KEY_INDIGESTIBLE", CKR_KEY_INDIGESTIBLE),
    (
        "CKR_KEY_FUNCTION_NOT_PERMITTED",
        CKR_KEY_FUNCTION_NOT_PERMITTED,
    ),
    ("CKR_KEY_NOT_WRAPPABLE", CKR_KEY_NOT_WRAPPABLE),
    ("CKR_KEY_UNEXTRACTABLE", CKR_KEY_UNEXTRACTABLE),
    ("CKR_MECHANISM_INVALID", CKR_MECHANISM_INVALID),
    ("CKR_MECHANISM_PARAM_INVALID", CKR_MECHANISM_PARAM_INVALID),
    ("CKR_OBJECT_HANDLE_INVALID", CKR_OBJECT_HANDLE_INVALID),
    ("CKR_OPERATION_ACTIVE", CKR_OPERATION_ACTIVE),
    (
        "CKR_OPERATION_NOT_INITIALIZED",
        CKR_OPERATION_NOT_INITIALIZED,
    ),
    ("CKR_PIN_INCORRECT", CKR_PIN_INCORRECT),
    ("CKR_PIN_INVALID", CKR_PIN_INVALID),
    ("CKR_PIN_LEN_RANGE", CKR_PIN_LEN_RANGE),
    ("CKR_PIN_EXPIRED", CKR_PIN_EXPIRED),
    ("CKR_PIN_LOCKED", CKR_PIN_LOCKED),
    ("CKR_SESSION_CLOSED", CKR_SESSION_CLOSED),
    ("CKR_SESSION_COUNT", CKR_SESSION_COUNT),
    ("CKR_SESSION_HANDLE_INVALID", CKR_SESSION_HANDLE_INVALID),
    (
        "CKR_SESSION_PARALLEL_NOT_SUPPORTED",
        CKR_SESSION_PARALLEL_NOT_SUPPORTED,
    ),
    ("CKR_SESSION_READ_ONLY", CKR_SESSION_READ_ONLY),
    ("CKR_SESSION_EXISTS", CKR_SESSION_EXISTS),
    ("CKR_SESSION_READ_ONLY_EXISTS", CKR_SESSION_READ_ONLY_EXISTS),
    (
        "CKR_SESSION_READ_WRITE_SO_EXISTS",
        CKR_SESSION_READ_WRITE_SO_EXISTS,
    ),
    ("CKR_SIGNATURE_INVALID", CKR_SIGNATURE_INVALID),
    ("CKR_SIGNATURE_LEN_RANGE", CKR_SIGNATURE_LEN_RANGE),
    ("CKR_TEMPLATE_INCOMPLETE", CKR_TEMPLATE_INCOMPLETE),
    ("CKR_TEMPLATE_INCONSISTENT", CKR_TEMPLATE_INCONSISTENT),
    ("CKR_TOKEN_NOT_PRESENT", CKR_TOKEN_NOT_PRESENT),
    ("CKR_TOKEN_NOT_RECOGNIZED", CKR_TOKEN_NOT_RECOGNIZED),
    ("CKR_TOKEN_WRITE_PROTECTED", CKR_TOKEN_WRITE_PROTECTED),
    (
        "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
        CKR_UNWRAPPING_KEY_HANDLE_INVALID,
    ),
    (
        "CKR_UNWRAPPING_KEY_SIZE_RANGE",
        CKR_UNWRAPPING_KEY_SIZE_RANGE,
    ),
    (
        "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT",
        CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
    ),
    ("CKR_USER_ALREADY_LOGGED_IN", CKR_USER_ALREADY_LOGGED_IN),
    ("CKR_USER_NOT_LOGGED_IN", CKR_USER_NOT_LOGGED_IN),
    ("CKR_USER_PIN_NOT_INITIALIZED", CKR_USER_PIN_NOT_INITIALIZED),
    ("CKR_USER_TYPE_INVALID", CKR_USER_TYPE_INVALID),
    (
        "CKR_USER_ANOTHER_ALREADY_LOGGED_IN",
        CKR_USER_ANOTHER_ALREADY_LOGGED_IN,
    ),
    ("CKR_USER_TOO_MANY_TYPES", CKR_USER_TOO_MANY_TYPES),
    ("CKR_WRAPPED_KEY_INVALID", CKR_WRAPPED_KEY_INVALID),
    ("CKR_WRAPPED_KEY_LEN_RANGE", CKR_WRAPPED_KEY_LEN_RANGE),
    (
        "CKR_WRAPPING_KEY_HANDLE_INVALID",
        CKR_WRAPPING_KEY_HANDLE_INVALID,
    ),
    ("CKR_WRAPPING_KEY_SIZE_RANGE", CKR_WRAPPING_KEY_SIZE_RANGE),
    (
        "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
        CKR_WRAPPING_KEY_TYPE_INCONSISTENT,
    ),
    (
        "CKR_RANDOM_SEED_NOT_SUPPORTED",
        CKR_RANDOM_SEED_NOT_SUPPORTED,
    ),
    ("CKR_RANDOM_NO_RNG", CKR_RANDOM_NO_RNG),
    ("CKR_DOMAIN_PARAMS_INVALID", CKR_DOMAIN_PARAMS_INVALID),
    ("CKR_CURVE_NOT_SUPPORTED", CKR_CURVE_NOT_SUPPORTED),
    ("CKR_BUFFER_TOO_SMALL", CKR_BUFFER_TOO_SMALL),
    ("CKR_SAVED_STATE_INVALID", CKR_SAVED_STATE_INVALID),
    ("CKR_INFORMATION_SENSITIVE", CKR_INFORMATION_SENSITIVE),
    ("CKR_STATE_UNSAVEABLE", CKR_STATE_UNSAVEABLE),
    ("CKR_CRYPTOKI_NOT_INITIALIZED", CKR_CRYPTOKI_NOT_INITIALIZED),
    (
        "CKR_CRYPTOKI_ALREADY_INITIALIZED",
        CKR_CRYPTOKI_ALREADY_INITIALIZED,
    ),
    ("CKR_MUTEX_BAD", CKR_MUTEX_BAD),
    ("CKR_MUTEX_NOT_LOCKED", CKR_MUTEX_NOT_LOCKED),
    ("CKR_NEW_PIN_MODE", CKR_NEW_PIN_MODE),
    ("CKR_NEXT_OTP", CKR_NEXT_OTP),
    ("CKR_EXCEEDED_MAX_ITERATIONS", CKR_EXCEEDED_MAX_ITERATIONS),
    ("CKR_FIPS_SELF_TEST_FAILED", CKR_FIPS_SELF_TEST_FAILED),
    ("CKR_LIBRARY_LOAD_FAILED", CKR_LIBRARY_LOAD_FAILED),
    ("CKR_PIN_TOO_WEAK", CKR_PIN_TOO_WEAK),
    ("CKR_PUBLIC_KEY_INVALID", CKR_PUBLIC_KEY_INVALID),
    ("CKR_FUNCTION_REJECTED", CKR_FUNCTION_REJECTED),
    ("CKR_TOKEN_RESOURCE_EXCEEDED", CKR_TOKEN_RESOURCE_EXCEEDED),
    ("CKR_OPERATION_CANCEL_FAILED", CKR_OPERATION_CANCEL_FAILED),
    ("CKR_KEY_EXHAUSTED", CKR_KEY_EXHAUSTED),
    ("CKR_PENDING", CKR_PENDING),
    (
        "CKR_SESSION_ASYNC_NOT_SUPPORTED",
        CKR_SESSION_ASYNC_NOT_SUPPORTED,
    ),
    ("CKR_SEED_RANDOM_REQUIRED", CKR_SEED_RANDOM_REQUIRED),
    ("CKR_OPERATION_NOT_VALIDATED", CKR_OPERATION_NOT_VALIDATED),
    ("CKR_TOKEN_NOT_INITIALIZED", CKR_TOKEN_NOT_INITIALIZED),
    (
        "CKR_PARAMETER_SET_NOT_SUPPORTED",
        CKR_PARAMETER_SET_NOT_SUPPORTED,
    ),
    ("CKR_VENDOR_DEFINED", CKR_VENDOR_DEFINED),
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn text_round_trips() {
        let plan = FaultPlan::new()
            .fail(CKR_DEVICE_ERROR)
            .on(&["C_Decrypt", "C_Encrypt"])
            .times(3)
            .lose_reply(CKR_DEVICE_ERROR)
            .on(&["C_GenerateKey"])
            .token_pulled()
            .stuck_after_device_error()
            .latency_ms(20)
            .session_cap(2)
            .advertised_session_cap(4)
            .remap(CKR_GENERAL_ERROR, CKR_DEVICE_ERROR)
            .on(&["C_UnwrapKey"])
            .hide_mechanism(CKM_AES_KEY_WRAP_PAD)
            .list_mechanism(0x210B)
            .refuse_mechanism(CKM_AES_KEY_WRAP_PAD)
            .translate_mechanism(0x210B, CKM_AES_KEY_WRAP_PAD)
            .token_flags(CKF_USER_PIN_FINAL_TRY)
            .rw_session_limit(3);
        let text = plan.to_string();
        assert_eq!(text.parse::<FaultPlan>().unwrap(), plan, "{text}");
        assert!(text.contains("fail CKR_DEVICE_ERROR on C_Decrypt,C_Encrypt times 3\n"));
        assert!(text.contains("remap CKR_GENERAL_ERROR CKR_DEVICE_ERROR on C_UnwrapKey\n"));
        assert!(text.contains("list-mechanism 0x210B\n"));
        assert!(text.contains("translate-mechanism 0x210B 0x210A\n"));
        assert_eq!(
            FaultPlan::new().kwp_only_as_0x210b().to_string(),
            "hide-mechanism 0x210A\nlist-mechanism 0x210B\nrefuse-mechanism 0x210A\ntranslate-mechanism 0x210B 0x210A\n"
        );
        let parsed: FaultPlan = "# comment\n\nfail 0x30 # trailing\nfail 179 on C_Login\n"
            .parse()
            .unwrap();
        assert_eq!(parsed.rules()[0].fault, Fault::Fail(CKR_DEVICE_ERROR));
        assert_eq!(
            parsed.rules()[1].fault,
            Fault::Fail(CKR_SESSION_HANDLE_INVALID)
        );
        assert!(parsed.rules()[1].applies_to("C_Login", true));
        assert!(!parsed.rules()[1].applies_to("C_Logout", true));
        assert!(parsed.rules()[0].applies_to("C_Logout", true));
        assert!(!parsed.rules()[0].applies_to("C_GetSlotList", false));
        for bad in [
            "explode",
            "fail",
            "fail CKR_NOPE",
            "latency x",
            "fail 0x30 on decrypt",
            "translate-mechanism 0x210B",
        ] {
            assert!(bad.parse::<FaultPlan>().is_err(), "{bad}");
        }
        assert_eq!(ckr_name(CKR_SESSION_COUNT), "CKR_SESSION_COUNT");
        assert_eq!(ckr_name(0x8000_1234), "0x80001234");
    }
}
