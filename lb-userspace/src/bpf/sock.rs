//! Socket-level load balancing: the cgroup connect, getpeername, sendmsg and recvmsg programs of
//! both families, attached to a cgroup v2 directory (by default the root of the first cgroup2 mount, i.e. every process of the node,
//! pods and host-network processes alike). Their links are pinned like the tc/XDP ones, so
//! they outlive the agent; a new agent attaches its programs and swaps the pin over, which
//! detaches the old link (both may run for an instant: the second sees a backend address and
//! leaves it alone).

use std::{
    fs::File,
    path::{Path, PathBuf},
    str::FromStr,
};

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use lb_common::prog_names;

use super::{LoadError, program};

/// cgroup2's `statfs` magic.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Which cgroup the socket programs attach to (`--cgroup`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupOpt {
    /// The first cgroup v2 mount of this mount namespace; off (with a warning) when none.
    Auto,
    /// Socket-level load balancing off: every connection goes through the tc path.
    Off,
    /// This cgroup v2 directory (and everything below it).
    Path(PathBuf),
}

impl FromStr for CgroupOpt {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => Self::Auto,
            "off" => Self::Off,
            p => Self::Path(PathBuf::from(p)),
        })
    }
}

/// The socket programs and their pin names under `<dir>/links`.
pub const PROGRAMS: [(&str, &str); 8] = [
    (prog_names::CONNECT4, "sock-connect4"),
    (prog_names::PEERNAME4, "sock-peername4"),
    (prog_names::SENDMSG4, "sock-sendmsg4"),
    (prog_names::RECVMSG4, "sock-recvmsg4"),
    (prog_names::CONNECT6, "sock-connect6"),
    (prog_names::PEERNAME6, "sock-peername6"),
    (prog_names::SENDMSG6, "sock-sendmsg6"),
    (prog_names::RECVMSG6, "sock-recvmsg6"),
];

/// The first cgroup2 mount point listed in `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Option<PathBuf> {
    cgroup2_in(&std::fs::read_to_string("/proc/self/mountinfo").ok()?)
}

/// The cgroup v2 root for `--cgroup auto`: this mount namespace's first cgroup2 mount, else
/// (in a private mount namespace whose `/sys` has none, as under `ip netns exec`) the host's,
/// through the outer mount namespace.
pub fn cgroup2_root() -> Option<PathBuf> {
    if let Some(p) = cgroup2_mount() {
        return Some(p);
    }
    let outer = super::pins::outer_root()?;
    let pid_dir = outer.parent()?;
    let found = cgroup2_in(&std::fs::read_to_string(pid_dir.join("mountinfo")).ok()?)?;
    let p = outer.join(found.strip_prefix("/").unwrap_or(&found));
    is_cgroup2(&p).then_some(p)
}

/// The cgroup `--cgroup PATH` names: `path` itself, else (in a private mount namespace) the
/// same path in the host's mount namespace.
pub fn resolve_cgroup(path: &Path) -> Result<PathBuf, std::io::Error> {
    if is_cgroup2(path) {
        return Ok(path.to_owned());
    }
    if let Some(outer) = super::pins::outer_root() {
        let p = outer.join(path.strip_prefix("/").unwrap_or(path));
        if is_cgroup2(&p) {
            return Ok(p);
        }
    }
    Err(std::io::Error::other("not a cgroup v2 directory"))
}

/// The first cgroup2 mount point of a mountinfo text.
fn cgroup2_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        // "<id> <parent> <dev> <root> <mount point> <opts> ... - <fstype> <source> <opts>"
        let (left, right) = l.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        left.split(' ').nth(4).map(PathBuf::from)
    })
}

/// True if `path` is a directory of a cgroup v2 hierarchy.
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct of the right type; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &raw mut st) } == 0)
        && st.f_type as i64 == CGROUP2_SUPER_MAGIC
}

fn attach_err(prog: &'static str, cgroup: &Path, e: impl std::error::Error) -> LoadError {
    let mut reason = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        reason = format!("{reason}: {s}");
        src = s.source();
    }
    LoadError::Attach {
        prog,
        iface: format!("cgroup {}", cgroup.display()),
        reason,
    }
}

/// Loads the socket programs of the object.
pub fn load(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    for (name, _) in PROGRAMS {
        let prog = program::<CgroupSockAddr>(ebpf, name)?;
        super::load_program(name, || prog.load())?;
    }
    Ok(())
}

/// Attaches the programs to `cgroup` and pins their links in place of any previous ones.
pub fn attach(ebpf: &mut Ebpf, dir: &Path, cgroup: &Path) -> Result<(), LoadError> {
    let first = PROGRAMS[0].0;
    if !is_cgroup2(cgroup) {
        return Err(attach_err(
            first,
            cgroup,
            std::io::Error::other("not a cgroup v2 directory"),
        ));
    }
    let fd = File::open(cgroup).map_err(|e| attach_err(first, cgroup, e))?;
    for (name, pin) in PROGRAMS {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        // A bpf_link: always one among many on the cgroup (link flags must be 0).
        let id = prog
            .attach(&fd, CgroupAttachMode::Single)
            .map_err(|e| attach_err(name, cgroup, e))?;
        let link = prog
            .take_link(id)
            .map_err(|e| attach_err(name, cgroup, e))?;
        let link = FdLink::try_from(link).map_err(|e| attach_err(name, cgroup, e))?;
        let links = dir.join("links");
        // bpffs names cannot contain dots.
        let tmp = links.join(format!("new-{pin}"));
        let _ = std::fs::remove_file(&tmp);
        link.pin(&tmp).map_err(|e| attach_err(name, cgroup, e))?;
        // The rename drops the previous agent's pin, which detaches its link.
        std::fs::rename(&tmp, links.join(pin)).map_err(|e| attach_err(name, cgroup, e))?;
    }
    Ok(())
}

/// Detaches the socket programs (their pins go).
pub fn detach(dir: &Path) {
    for (_, pin) in PROGRAMS {
        let _ = std::fs::remove_file(dir.join("links").join(pin));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_flag_values() {
        assert_eq!("auto".parse::<CgroupOpt>(), Ok(CgroupOpt::Auto));
        assert_eq!("off".parse::<CgroupOpt>(), Ok(CgroupOpt::Off));
        assert_eq!(
            "/sys/fs/cgroup".parse::<CgroupOpt>(),
            Ok(CgroupOpt::Path("/sys/fs/cgroup".into()))
        );
    }

    #[test]
    fn the_cgroup2_mount_is_found_on_unified_and_hybrid_hosts() {
        let unified =
            "29 1 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_in(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        let hybrid = "\
24 1 0:21 / /sys/fs/cgroup rw shared:7 - tmpfs tmpfs rw,mode=755
25 24 0:22 / /sys/fs/cgroup/cpu rw shared:8 - cgroup cgroup rw,cpu
33 24 0:30 / /sys/fs/cgroup/unified rw shared:16 - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v1_only = "25 24 0:22 / /sys/fs/cgroup/cpu rw shared:8 - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_in(v1_only), None);
    }

    #[test]
    fn a_regular_directory_is_not_a_cgroup() {
        assert!(!is_cgroup2(Path::new("/tmp")));
        assert!(!is_cgroup2(Path::new("/nonexistent/xlb")));
    }
}
