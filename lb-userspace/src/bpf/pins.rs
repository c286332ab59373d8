//! The pin directory: where it really is (`resolve`), bpffs checks, and the layout check that
//! keeps an agent from adopting maps written with another layout (a version bump is refused
//! with a clear message, never mixed).
//!
//! Pins must outlive the agent, so they must live in a bpffs the host keeps mounted. A process
//! started with `ip netns exec` (or `unshare -m`) runs in a private mount namespace whose
//! `/sys` is a fresh sysfs without the host's bpffs: a bpffs mounted there would vanish with
//! the process, and every program with it. `resolve` finds the host's bpffs through the first
//! ancestor process in another mount namespace and keeps a handle on it
//! (`/proc/self/fd/N/...`), or refuses with what to do.

use std::{
    ffi::CString,
    path::{Path, PathBuf},
};

use aya::maps::{MapInfo, MapType};
use lb_common::{
    AffinityKey, AffinityValue, AgentStatus, Backend, Config, Config6, CtKey, CtValue, DevState,
    FragKey, FragKey6, FragPorts, Ipv6, LAYOUT_VERSION, ServiceKey, ServiceValue, SockRevKey,
    SockRevValue, SockXlate, SrcRangeKey, SvcInfo, SvcStats, Trace, map_names as names,
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
    /// Pins made here would vanish with this process.
    #[error("{path}: {reason}")]
    Private { path: PathBuf, reason: String },
    /// A pinned map has another layout than this agent's.
    #[error(
        "{path} was created by an xlb with another map layout ({found}; this agent needs \
         {expected}, and migrates only from the layout just before it). Refusing to mix \
         layouts; the old datapath keeps forwarding. Upgrade through each release in turn, \
         or remove the old datapath with `xlb agent --cleanup --bpffs {dir}` (established \
         connections through VIPs are reset) and start again: docs/upgrading.md."
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
    let rc = unsafe { libc::statfs(c.as_ptr(), &raw mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Where a pin directory really is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinRoot {
    /// The path to use for every syscall (the directory itself, or a path through a handle on
    /// the host's mount namespace).
    pub path: PathBuf,
    /// What the user named (for messages).
    pub shown: PathBuf,
    /// `lb_common::pins_via::*`.
    pub via: u8,
}

/// `stat().st_ino` of a namespace link of `pid` ("self" or a number).
fn ns_inode(pid: &str, ns: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
        .ok()
        .map(|m| m.ino())
}

/// The parent pid of `pid`, from `/proc/<pid>/stat`.
fn parent_of(pid: &str) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "<pid> (<comm>) <state> <ppid> ...": comm may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The root directory of the nearest ancestor process in another mount namespace (the one
/// `ip netns exec` or `unshare -m` was run from), if any is visible and readable.
pub fn outer_root() -> Option<PathBuf> {
    let own = ns_inode("self", "mnt")?;
    let mut pid = parent_of("self")?;
    for _ in 0..32 {
        if pid == 0 {
            return None;
        }
        let p = pid.to_string();
        match ns_inode(&p, "mnt") {
            Some(ns) if ns != own => {
                let root = PathBuf::from(format!("/proc/{p}/root"));
                return std::fs::read_dir(&root).is_ok().then_some(root);
            }
            _ => {}
        }
        if pid == 1 {
            return None;
        }
        pid = parent_of(&p)?;
    }
    None
}

/// `path` as seen from the root `root`.
fn under(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The nearest existing ancestor of `path` (itself included).
fn existing(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            break;
        }
    }
    p
}

/// The device of the filesystem at `path`.
fn dev_of(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path).ok().map(|m| m.dev())
}

/// True in the host's pid namespace (a container has its own).
fn in_initial_pid_ns() -> bool {
    /// `PROC_PID_INIT_INO`: the initial pid namespace's fixed inode number.
    const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
    ns_inode("self", "pid") == Some(PROC_PID_INIT_INO)
}

/// Handles on the host's bpffs kept for the process's life (see `resolve`).
static HANDLES: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

/// `path` (an existing directory) through a handle that stays valid when the process that
/// showed it to us exits: `/proc/self/fd/N`.
fn held(path: &Path) -> Result<PathBuf, PinError> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(path).map_err(|source| PinError::Io {
        path: path.to_owned(),
        source,
    })?;
    let p = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
    HANDLES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(f);
    Ok(p)
}

/// Where the pin directory `dir` is for the agent: on a bpffs that outlives it. `dir` itself
/// when it is on the host's bpffs (or no other is visible: `ensure_dir` decides); in a private
/// mount namespace, the host's bpffs at `dir` (through a handle), even when a private one is
/// mounted here. Refused when pins could only be made in a bpffs private to this namespace.
pub fn resolve(dir: &Path) -> Result<PinRoot, PinError> {
    let local = PinRoot {
        path: dir.to_owned(),
        shown: dir.to_owned(),
        via: lb_common::pins_via::LOCAL,
    };
    let here = existing(dir);
    let Some(outer) = outer_root() else {
        return Ok(local);
    };
    let there = existing(&under(&outer, dir));
    if is_bpffs(&here) && (!is_bpffs(&there) || dev_of(&here) == dev_of(&there)) {
        // The host's own bpffs (a shared mount), or the only one there is.
        return Ok(local);
    }
    if is_bpffs(&there) {
        // Hold the host's directory, then name the rest of `dir` below it.
        let held_dir = held(&there)?;
        let full = under(&outer, dir);
        let rest = full.strip_prefix(&there).unwrap_or(Path::new(""));
        return Ok(PinRoot {
            path: held_dir.join(rest),
            shown: dir.to_owned(),
            via: lb_common::pins_via::HOST,
        });
    }
    Err(PinError::Private {
        path: dir.to_owned(),
        reason: format!(
            "this process runs in a private mount namespace (as `ip netns exec` and `unshare -m` \
             make), and the host has no bpffs at {}: pins made here would vanish with the agent, \
             and the datapath with them. Mount bpffs on the host (`mount -t bpf bpf /sys/fs/bpf`) \
             or start the agent in the host's mount namespace (e.g. `nsenter --net=/run/netns/NS \
             xlb agent ...`).",
            dir.display()
        ),
    })
}

/// Where the pin directory `dir` is for a reader (the CLI): the directory itself when it is
/// on a bpffs here, else the host's through the outer mount namespace (`ip netns exec xlb ...`).
pub fn resolve_read(dir: &Path) -> PathBuf {
    if is_bpffs(&existing(dir)) {
        return dir.to_owned();
    }
    if let Some(outer) = outer_root() {
        let there = under(&outer, dir);
        if there.exists() && is_bpffs(&there) {
            return there;
        }
    }
    dir.to_owned()
}

/// Makes sure `dir` exists on a bpffs; mounts bpffs on `/sys/fs/bpf` if that is where `dir`
/// lives and nothing is mounted there yet (never in a container: that bpffs would be the
/// container's own and vanish with it).
pub fn ensure_dir(dir: &Path) -> Result<(), PinError> {
    let probe = existing(dir);
    if !is_bpffs(&probe) {
        let sysfs_bpf = Path::new("/sys/fs/bpf");
        if dir.starts_with(sysfs_bpf) && !is_bpffs(sysfs_bpf) && !in_initial_pid_ns() {
            return Err(PinError::Private {
                path: dir.to_owned(),
                reason: "not on a BPF filesystem, and this process runs in a container: a bpffs \
                         mounted here would vanish with it. Mount the host's /sys/fs/bpf into \
                         the container (hostPath, as deploy/kubernetes does)."
                    .to_owned(),
            });
        }
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
pub fn expected_layout() -> [(&'static str, MapType, usize, usize); 31] {
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
            names::CT_NEW,
            MapType::LruHash,
            size_of::<CtKey>(),
            size_of::<CtValue>(),
        ),
        (
            names::FRAGS,
            MapType::LruHash,
            size_of::<FragKey>(),
            size_of::<FragPorts>(),
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
        (
            names::SOCK_REV,
            MapType::LruHash,
            size_of::<SockRevKey>(),
            size_of::<SockRevValue>(),
        ),
        (names::FE_FILTER, MapType::Array, 4, 8),
        (names::BE_FILTER, MapType::Array, 4, 8),
        (names::BE_NAT, MapType::Array, 4, 64),
        (names::DEVICES, MapType::Array, 4, size_of::<DevState>()),
        (names::AGENT, MapType::Array, 4, size_of::<AgentStatus>()),
        (
            names::SERVICES6,
            MapType::Hash,
            size_of::<ServiceKey<Ipv6>>(),
            size_of::<ServiceValue>(),
        ),
        (
            names::BACKENDS6,
            MapType::Hash,
            4,
            size_of::<Backend<Ipv6>>(),
        ),
        (
            names::CONNTRACK6,
            MapType::LruHash,
            size_of::<CtKey<Ipv6>>(),
            size_of::<CtValue<Ipv6>>(),
        ),
        (
            names::CT_NEW6,
            MapType::LruHash,
            size_of::<CtKey<Ipv6>>(),
            size_of::<CtValue<Ipv6>>(),
        ),
        (
            names::AFFINITY6,
            MapType::LruHash,
            size_of::<AffinityKey<Ipv6>>(),
            size_of::<AffinityValue>(),
        ),
        (
            names::SRC_RANGES6,
            MapType::LpmTrie,
            4 + size_of::<SrcRangeKey<Ipv6>>(),
            1,
        ),
        (names::CONFIG6, MapType::Array, 4, size_of::<Config6>()),
        (
            names::SOCK6,
            MapType::Array,
            4,
            size_of::<SockXlate<Ipv6>>(),
        ),
        (
            names::SOCK_REV6,
            MapType::LruHash,
            size_of::<SockRevKey<Ipv6>>(),
            size_of::<SockRevValue<Ipv6>>(),
        ),
        (
            names::FRAGS6,
            MapType::LruHash,
            size_of::<FragKey6>(),
            size_of::<FragPorts>(),
        ),
    ]
}

/// Checks every map already pinned under `dir` against this agent's layout.
pub fn check_layout(dir: &Path) -> Result<(), PinError> {
    check_layout_except_version(dir)?;
    check_version(dir)
}

/// The shapes (type, key and value sizes) of the maps pinned under `dir`, without the version
/// the config names (a migration checks the shapes before it rewrites the version).
pub fn check_layout_except_version(dir: &Path) -> Result<(), PinError> {
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
    Ok(())
}

/// Same sizes but another meaning: the version in the config entry tells.
fn check_version(dir: &Path) -> Result<(), PinError> {
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
/// False when there was nothing.
pub fn remove_all(dir: &Path) -> Result<bool, PinError> {
    if !dir.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(dir)
        .map(|()| true)
        .map_err(|source| PinError::Io {
            path: dir.to_owned(),
            source,
        })
}

/// Whether an xlb datapath is pinned in `dir` (its frontend map is).
pub fn has_datapath(dir: &Path) -> bool {
    dir.join(lb_common::map_names::SERVICES).exists()
}

/// What every read command says when `dir` holds no datapath.
pub fn no_datapath_message(dir: &Path) -> String {
    format!(
        "no xlb datapath is pinned under {}: no agent ever ran with this --bpffs, or it was \
         removed (`xlb agent --cleanup`); start one with `xlb agent`, or point --bpffs \
         (XLB_BPFFS) at its pin directory",
        dir.display()
    )
}
