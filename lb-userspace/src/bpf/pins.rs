//! The pin directory: bpffs checks, and the layout check that keeps an agent from adopting maps
//! written with another layout (a version bump is refused with a clear message, never mixed).

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::maps::{MapInfo, MapType};
use lb_common::{
    AffinityKey, AffinityValue, Backend, Config, CtKey, CtValue, LAYOUT_VERSION, ServiceKey,
    ServiceValue, SockXlate, SrcRangeKey, SvcInfo, SvcStats, Trace, map_names as names,
};

/// A problem with the pin directory.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// The directory is not on a bpffs and could not be made so.
    #[error("{path}: not on a BPF filesystem ({reason})")]
    NotBpffs { path: PathBuf, reason: String },
    /// Filesystem error.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A pinned map has another layout than this agent's.
    #[error(
        "{path} was created by an xlb with another map layout ({found}; this agent needs \
         {expected}). Refusing to mix layouts. Either run the xlb version that created it, or \
         remove the old datapath with `xlb agent --cleanup --bpffs {dir}` (established \
         connections through VIPs are reset) and start again."
    )]
    Layout {
        path: PathBuf,
        dir: String,
        found: String,
        expected: String,
    },
}

/// The filesystem magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path; `st` is a plain struct filled by the kernel.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure `dir` exists on a bpffs; mounts bpffs on `/sys/fs/bpf` if that is where `dir`
/// lives and nothing is mounted there yet.
pub fn ensure_dir(dir: &Path) -> Result<(), PinError> {
    let mut probe = dir.to_path_buf();
    while !probe.exists() {
        if !probe.pop() {
            break;
        }
    }
    if !is_bpffs(&probe) {
        let sysfs_bpf = Path::new("/sys/fs/bpf");
        if dir.starts_with(sysfs_bpf) && !is_bpffs(sysfs_bpf) {
            let src = CString::new("bpf").unwrap_or_default();
            let target = CString::new("/sys/fs/bpf").unwrap_or_default();
            std::fs::create_dir_all(sysfs_bpf).map_err(|source| PinError::Io {
                path: sysfs_bpf.to_owned(),
                source,
            })?;
            // SAFETY: valid C strings; null data is allowed for bpffs.
            let rc = unsafe {
                libc::mount(
                    src.as_ptr(),
                    target.as_ptr(),
                    src.as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(PinError::NotBpffs {
                    path: dir.to_owned(),
                    reason: format!("mount bpffs: {}", std::io::Error::last_os_error()),
                });
            }
        } else {
            return Err(PinError::NotBpffs {
                path: dir.to_owned(),
                reason: "mount a bpffs there (mount -t bpf bpf DIR) or choose a directory under \
                         /sys/fs/bpf"
                    .to_owned(),
            });
        }
    }
    for d in [dir.to_owned(), dir.join("links")] {
        std::fs::create_dir_all(&d).map_err(|source| PinError::Io { path: d, source })?;
    }
    Ok(())
}

/// Type, key size and value size each map must have.
pub fn expected_layout() -> [(&'static str, MapType, usize, usize); 16] {
    use std::mem::size_of;
    [
        (
            names::SERVICES,
            MapType::Hash,
            size_of::<ServiceKey>(),
            size_of::<ServiceValue>(),
        ),
        (names::BACKENDS, MapType::Hash, 4, size_of::<Backend>()),
        (names::LUT, MapType::HashOfMaps, 4, 4),
        (
            names::CONNTRACK,
            MapType::LruHash,
            size_of::<CtKey>(),
            size_of::<CtValue>(),
        ),
        (
            names::AFFINITY,
            MapType::LruHash,
            size_of::<AffinityKey>(),
            size_of::<AffinityValue>(),
        ),
        (
            names::SRC_RANGES,
            MapType::LpmTrie,
            4 + size_of::<SrcRangeKey>(),
            1,
        ),
        (names::COUNTERS, MapType::PerCpuArray, 4, 8),
        (
            names::SVC_STATS,
            MapType::PerCpuArray,
            4,
            size_of::<SvcStats>(),
        ),
        (names::SVC_INFO, MapType::Hash, 4, size_of::<SvcInfo>()),
        (names::CONFIG, MapType::Array, 4, size_of::<Config>()),
        (names::EVENTS, MapType::RingBuf, 0, 0),
        (names::TRACE, MapType::PerCpuArray, 4, size_of::<Trace>()),
        (names::SOCK, MapType::Array, 4, size_of::<SockXlate>()),
        (names::FE_FILTER, MapType::Array, 4, 8),
        (names::BE_FILTER, MapType::Array, 4, 8),
        (names::BE_NAT, MapType::Array, 4, 64),
    ]
}

/// Checks every map already pinned under `dir` against this agent's layout.
pub fn check_layout(dir: &Path) -> Result<(), PinError> {
    for (name, ty, key, value) in expected_layout() {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let layout_err = |found: String| PinError::Layout {
            path: path.clone(),
            dir: dir.display().to_string(),
            found,
            expected: format!("{ty:?} key {key} B value {value} B, layout v{LAYOUT_VERSION}"),
        };
        let info = MapInfo::from_pin(&path).map_err(|e| layout_err(format!("unreadable: {e}")))?;
        let found_ty = info.map_type().ok();
        if found_ty != Some(ty)
            || (ty != MapType::RingBuf
                && (info.key_size() as usize != key || info.value_size() as usize != value))
        {
            return Err(layout_err(format!(
                "{found_ty:?} key {} B value {} B",
                info.key_size(),
                info.value_size()
            )));
        }
    }
    // Same sizes but another meaning: the version in the config entry tells.
    let cfg = dir.join(names::CONFIG);
    if cfg.exists()
        && let Ok(data) = aya::maps::MapData::from_pin(&cfg)
        && let Ok(arr) = aya::maps::Array::<_, Config>::try_from(aya::maps::Map::Array(data))
        && let Ok(c) = arr.get(&0, 0)
        && c.layout_version != 0
        && c.layout_version != LAYOUT_VERSION
    {
        return Err(PinError::Layout {
            path: cfg,
            dir: dir.display().to_string(),
            found: format!("layout v{}", c.layout_version),
            expected: format!("layout v{LAYOUT_VERSION}"),
        });
    }
    Ok(())
}

/// Removes every pin under `dir` (maps and links): the datapath detaches and its state is gone.
pub fn remove_all(dir: &Path) -> Result<(), PinError> {
    if !dir.exists() {
        return Ok(());
    }
    std::fs::remove_dir_all(dir).map_err(|source| PinError::Io {
        path: dir.to_owned(),
        source,
    })
}
