//! The OS sandbox of the extension host: Landlock restricts the process, before it runs
//! any plugin, to the plugin store files, the isolated plugin directory and the plugin
//! packages (read-only). `core.db` is not among them, so even a compromised host cannot
//! open it.

use std::path::PathBuf;

use landlock::{
    ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    path_beneath_rules,
};
use sovereign_protocol::SandboxStatus;

/// What the host may touch.
#[derive(Debug, Clone, Default)]
pub struct Allowed {
    /// Files opened read-write (the shared store and its `-wal`/`-shm`).
    pub read_write_files: Vec<PathBuf>,
    /// Directories whose contents may be created and written (`data/plugins/`).
    pub read_write_dirs: Vec<PathBuf>,
    /// Files and directories readable only (plugin packages, the mirror file).
    pub read_only: Vec<PathBuf>,
}

/// Restricts this process for good. Returns how well it worked; never fails open
/// silently: an unsupported kernel is reported as [`SandboxStatus::Unavailable`].
pub fn restrict(allowed: &Allowed) -> SandboxStatus {
    let abi = ABI::V5;
    let result = (|| -> Result<RulesetStatus, landlock::RulesetError> {
        let status = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))?
            .create()?
            .add_rules(path_beneath_rules(
                &allowed.read_write_files,
                AccessFs::from_all(abi),
            ))?
            .add_rules(path_beneath_rules(
                &allowed.read_write_dirs,
                AccessFs::from_all(abi),
            ))?
            .add_rules(path_beneath_rules(
                &allowed.read_only,
                AccessFs::from_read(abi),
            ))?
            .add_rules(path_beneath_rules(
                ["/dev/urandom", "/dev/null"],
                AccessFs::from_read(abi),
            ))?
            .restrict_self()?;
        Ok(status.ruleset)
    })();
    match result {
        Ok(RulesetStatus::FullyEnforced) => SandboxStatus::Enforced,
        Ok(RulesetStatus::PartiallyEnforced) => SandboxStatus::Partial(
            "the kernel supports an older Landlock ABI; some rights are not restricted".into(),
        ),
        Ok(RulesetStatus::NotEnforced) => SandboxStatus::Unavailable(
            "the kernel does not support Landlock (or it is disabled)".into(),
        ),
        Err(e) => SandboxStatus::Unavailable(format!("Landlock could not be set up: {e}")),
    }
}
