//! Upgrades a datapath pinned by the previous layout in place, tracked flows included, so an
//! agent upgrade keeps every connection as a same-version restart does.
//!
//! From layout v4 to v5 only conntrack changed: one table became two (`xlb_ct` for confirmed
//! flows, `xlb_ct_new` for unanswered ones) and each entry grew by the TCP sequence it expects
//! and its next hop's MTU (appended, 52 → 60 bytes). Every other map keeps its layout and is
//! adopted as it is. The steps:
//! 1. [`prepare`], before the load: the old table is pinned aside (`xlb_ct_v4`, bpffs allows no dot; the old
//!    programs keep using the table itself) and the config is marked with this layout, so the
//!    load creates both new tables and adopts everything else.
//! 2. [`Pending::copy`], after the load: every flow is converted into the new tables.
//! 3. [`Pending::finish`], once the new programs are attached: flows the old programs created
//!    in the meantime are copied too (never over an entry the new programs wrote), then the old
//!    table is unpinned.

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, MapInfo};
use lb_common::{
    Config, CtKey, CtValue, LAYOUT_VERSION, ct_state, map_names as names, route_flags,
};

/// The layout this module upgrades from.
pub const FROM: u32 = 4;

// A new layout needs its own migration from this one (and this module's steps replaced).
const _: () = assert!(
    LAYOUT_VERSION == FROM + 1,
    "LAYOUT_VERSION changed: write the migration from the previous layout in bpf/migrate.rs"
);

/// `BPF_NOEXIST`: insert only if absent.
const BPF_NOEXIST: u64 = 1;

/// Bytes of a v4 conntrack value (this layout's without its last 8).
const V4_CT_VALUE: usize = 52;

/// A migration step that failed; the message says which and why.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A pin could not be read, moved or written.
    #[error("{path}: {what}: {message}")]
    Map {
        path: PathBuf,
        what: &'static str,
        message: String,
    },
    /// The pins claim the previous layout but do not have its shape.
    #[error(
        "{path}: the datapath says layout v{FROM} but this map is {found}; it cannot be \
         migrated: see docs/upgrading.md"
    )]
    Unexpected { path: PathBuf, found: String },
}

fn map_err(path: &Path, what: &'static str, e: impl std::fmt::Display) -> MigrateError {
    MigrateError::Map {
        path: path.to_owned(),
        what,
        message: e.to_string(),
    }
}

/// The layout version the pinned config names (`None`: nothing pinned, or unreadable).
fn pinned_version(dir: &Path) -> Option<u32> {
    let data = MapData::from_pin(dir.join(names::CONFIG)).ok()?;
    let arr = Array::<_, Config>::try_from(Map::Array(data)).ok()?;
    arr.get(&0, 0).ok().map(|c| c.layout_version)
}

/// A migration under way: the old conntrack table, pinned aside.
#[derive(Debug)]
pub struct Pending {
    dir: PathBuf,
    old: PathBuf,
    /// Flows (entries) copied so far.
    pub copied: usize,
}

/// Step 1 (see the module comment). `None` when `dir` does not hold a previous-layout datapath.
pub fn prepare(dir: &Path) -> Result<Option<Pending>, MigrateError> {
    if pinned_version(dir) != Some(FROM) {
        return Ok(None);
    }
    let ct = dir.join(names::CONNTRACK);
    let old = dir.join(format!("{}_v{FROM}", names::CONNTRACK));
    if !old.exists() {
        let info = MapInfo::from_pin(&ct).map_err(|e| map_err(&ct, "reading", e))?;
        if info.key_size() as usize != size_of::<CtKey>()
            || info.value_size() as usize != V4_CT_VALUE
        {
            return Err(MigrateError::Unexpected {
                path: ct,
                found: format!("key {} B value {} B", info.key_size(), info.value_size()),
            });
        }
        // bpffs has no rename: pin the table under its new name, then unpin the old name.
        let data = MapData::from_pin(&ct).map_err(|e| map_err(&ct, "opening", e))?;
        data.pin(&old).map_err(|e| map_err(&old, "pinning", e))?;
        std::fs::remove_file(&ct).map_err(|e| map_err(&ct, "unpinning", e))?;
    }
    // Every other map must already have this layout's shape.
    if let Err(e) = super::pins::check_layout_except_version(dir) {
        // Back under its own name: the old agent can take over again.
        if let Ok(data) = MapData::from_pin(&old)
            && data.pin(&ct).is_ok()
        {
            let _ = std::fs::remove_file(&old);
        }
        return Err(MigrateError::Unexpected {
            path: dir.to_owned(),
            found: e.to_string(),
        });
    }
    let cfg = dir.join(names::CONFIG);
    let data = MapData::from_pin(&cfg).map_err(|e| map_err(&cfg, "opening", e))?;
    let mut arr =
        Array::<_, Config>::try_from(Map::Array(data)).map_err(|e| map_err(&cfg, "opening", e))?;
    let mut c = arr.get(&0, 0).map_err(|e| map_err(&cfg, "reading", e))?;
    c.layout_version = LAYOUT_VERSION;
    arr.set(0, c, 0).map_err(|e| map_err(&cfg, "writing", e))?;
    tracing::info!(
        bpffs = %dir.display(),
        "datapath of layout v{FROM}: migrating to v{LAYOUT_VERSION} (conntrack kept)"
    );
    Ok(Some(Pending {
        dir: dir.to_owned(),
        old,
        copied: 0,
    }))
}

/// A v4 conntrack value in this layout: the same fields, the new ones unknown (no expected
/// sequence; the route cache invalidated so the next packet looks its hop up, MTU included).
fn convert(v4: &[u8; V4_CT_VALUE]) -> CtValue {
    let u32_at = |o: usize| u32::from_ne_bytes([v4[o], v4[o + 1], v4[o + 2], v4[o + 3]]);
    let u16_at = |o: usize| u16::from_ne_bytes([v4[o], v4[o + 1]]);
    let ip_at = |o: usize| [v4[o], v4[o + 1], v4[o + 2], v4[o + 3]];
    let mut macs = [0u8; 12];
    macs.copy_from_slice(&v4[40..52]);
    CtValue {
        svc_id: u32_at(0),
        backend_id: u32_at(4),
        created: u32_at(8),
        expires: u32_at(12),
        nat_saddr: ip_at(16),
        nat_daddr: ip_at(20),
        nat_sport: u16_at(24),
        nat_dport: u16_at(26),
        state: v4[28],
        flags: v4[29],
        hook: v4[30],
        route_flags: v4[31] & !(route_flags::CACHED | route_flags::MACS),
        route_ifindex: u32_at(32),
        route_at: 0,
        route_macs: macs,
        seq_end: 0,
        route_mtu: 0,
        _pad: 0,
    }
}

impl Pending {
    /// Converts every flow of the old table not yet in the new ones: unanswered handshakes
    /// into `xlb_ct_new`, everything else into `xlb_ct`. Returns how many entries it wrote.
    fn copy_missing(&mut self) -> Result<usize, MigrateError> {
        let open = |path: &Path| -> Result<HashMap<MapData, CtKey, CtValue>, MigrateError> {
            let data = MapData::from_pin(path).map_err(|e| map_err(path, "opening", e))?;
            HashMap::try_from(Map::LruHashMap(data)).map_err(|e| map_err(path, "opening", e))
        };
        let old_data =
            MapData::from_pin(&self.old).map_err(|e| map_err(&self.old, "opening", e))?;
        let old: HashMap<MapData, CtKey, [u8; V4_CT_VALUE]> =
            HashMap::try_from(Map::LruHashMap(old_data))
                .map_err(|e| map_err(&self.old, "opening", e))?;
        let ct_path = self.dir.join(names::CONNTRACK);
        let new_path = self.dir.join(names::CT_NEW);
        let mut ct = open(&ct_path)?;
        let mut ct_new = open(&new_path)?;
        let mut wrote = 0;
        for entry in &old {
            let Ok((k, v)) = entry else { continue };
            let v = convert(&v);
            if ct.get(&k, 0).is_ok() || ct_new.get(&k, 0).is_ok() {
                continue;
            }
            // BPF_NOEXIST: an entry the new programs wrote meanwhile wins.
            let (r, path) = if v.state == ct_state::SYN_SENT {
                (ct_new.insert(k, v, BPF_NOEXIST), &new_path)
            } else {
                (ct.insert(k, v, BPF_NOEXIST), &ct_path)
            };
            match r {
                Ok(()) => wrote += 1,
                Err(e) => tracing::debug!(path = %path.display(), error = %e, "flow not migrated"),
            }
        }
        self.copied += wrote;
        Ok(wrote)
    }

    /// Step 2 (see the module comment).
    pub fn copy(&mut self) -> Result<usize, MigrateError> {
        self.copy_missing()
    }

    /// Step 3 (see the module comment): the last copy, then the old table goes.
    pub fn finish(mut self) -> Result<usize, MigrateError> {
        self.copy_missing()?;
        std::fs::remove_file(&self.old).map_err(|e| map_err(&self.old, "unpinning", e))?;
        tracing::info!(
            bpffs = %self.dir.display(),
            flows = self.copied,
            "migrated the datapath from layout v{FROM} to v{LAYOUT_VERSION}"
        );
        Ok(self.copied)
    }
}
