//! Network devices of the agent's network namespace: listing, glob matching of pod-facing
//! names, and a netlink subscription that reports link changes so new pod devices are attached
//! as they appear.

use std::{ffi::CStr, io, os::fd::AsRawFd as _, os::fd::FromRawFd as _, os::fd::OwnedFd};

use tokio::sync::mpsc;

/// A network device.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Iface {
    pub name: String,
    pub index: u32,
}

/// Devices of the current network namespace.
pub fn list() -> io::Result<Vec<Iface>> {
    // SAFETY: if_nameindex returns a heap array terminated by a zero entry, freed below.
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut p = head;
    // SAFETY: walking the array up to its terminator; names are valid C strings.
    unsafe {
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            let name = CStr::from_ptr((*p).if_name).to_string_lossy().into_owned();
            out.push(Iface {
                name,
                index: (*p).if_index,
            });
            p = p.add(1);
        }
        libc::if_freenameindex(head);
    }
    out.sort();
    Ok(out)
}

/// Shell-style glob with `*` and `?`.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0usize, 0usize);
    let (mut star, mut mark) = (None, 0usize);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// True if `name` matches any of `patterns`.
pub fn matches_any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, name))
}

/// Subscribes to link notifications (RTMGRP_LINK) of the current network namespace. A unit
/// is sent (coalesced) on every change; the receiver rescans.
pub fn watch_links() -> io::Result<mpsc::Receiver<()>> {
    // SAFETY: plain socket syscall; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; zeroed then filled.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = libc::RTMGRP_LINK as u32;
    // SAFETY: `addr` is a valid sockaddr_nl of the given length.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let (tx, rx) = mpsc::channel(1);
    std::thread::Builder::new()
        .name("xlb-netlink".to_owned())
        .spawn(move || {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                // SAFETY: reading into our own buffer of the given length.
                let n = unsafe {
                    libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    // ENOBUFS: we lost events; a rescan catches up.
                    if e.raw_os_error() != Some(libc::ENOBUFS) {
                        tracing::warn!(error = %e, "netlink link watch stopped; relying on periodic rescans");
                        return;
                    }
                }
                if tx.try_send(()).is_err() && tx.is_closed() {
                    return;
                }
            }
        })?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("veth*", "veth1234"));
        assert!(glob_match("veth*", "veth"));
        assert!(!glob_match("veth*", "eth0"));
        assert!(glob_match("*-pod", "client-pod"));
        assert!(glob_match("lxc?", "lxc1"));
        assert!(!glob_match("lxc?", "lxc12"));
        assert!(glob_match("*a*b*", "xxaxxbxx"));
        assert!(glob_match("eth0", "eth0"));
        assert!(!glob_match("eth0", "eth01"));
    }
}
