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

/// True if a device with this index exists in the current network namespace.
pub fn exists(ifindex: u32) -> bool {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes as the call requires.
    !unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) }.is_null()
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

/// What rtnetlink says of a device (`RTM_GETLINK`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkInfo {
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, `vxlan`, ...); none for a physical NIC's driver.
    pub kind: Option<String>,
    /// `IFLA_LINK`: a veth's peer ifindex (in `link_netnsid`'s namespace when set).
    pub link: Option<u32>,
    /// `IFLA_LINK_NETNSID`: the namespace of `link`, as this namespace numbers it.
    pub link_netnsid: Option<i32>,
    /// `IFLA_XDP_ATTACHED`: 0 none, 1 driver, 2 generic, 3 offloaded, 4 several.
    pub xdp_attached: u8,
}

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const IFLA_LINK: u16 = 5;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_TARGET_NETNSID: u16 = 46;
/// Attribute types carry flag bits above this mask (NLA_F_NESTED, NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// The rtattrs of `buf`: (type, payload).
fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[len.next_multiple_of(4).min(buf.len())..];
        Some((ty, payload))
    })
}

/// Parses the attributes of an `RTM_NEWLINK` answer (after its ifinfomsg).
fn parse_link(attrs_buf: &[u8]) -> LinkInfo {
    let mut info = LinkInfo::default();
    let u32_of = |p: &[u8]| {
        p.get(..4)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    };
    for (ty, p) in attrs(attrs_buf) {
        match ty {
            IFLA_LINK => info.link = u32_of(p),
            IFLA_LINK_NETNSID => info.link_netnsid = u32_of(p).map(|v| v as i32),
            IFLA_LINKINFO => {
                for (t, k) in attrs(p) {
                    if t == IFLA_INFO_KIND {
                        let end = k.iter().position(|b| *b == 0).unwrap_or(k.len());
                        info.kind = Some(String::from_utf8_lossy(&k[..end]).into_owned());
                    }
                }
            }
            IFLA_XDP => {
                for (t, v) in attrs(p) {
                    if t == IFLA_XDP_ATTACHED {
                        info.xdp_attached = v.first().copied().unwrap_or(0);
                    }
                }
            }
            _ => {}
        }
    }
    info
}

/// Asks rtnetlink about device `ifindex` (of the namespace `netnsid` names, if given).
pub fn link_info(ifindex: u32, netnsid: Option<i32>) -> io::Result<LinkInfo> {
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
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: setting a receive timeout with a valid timeval of the given length.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    // nlmsghdr (16) + ifinfomsg (16) + IFLA_TARGET_NETNSID (8).
    let mut req = vec![0u8; 32];
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNSPEC as u8;
    req[20..24].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    if let Some(id) = netnsid {
        req.extend_from_slice(&8u16.to_ne_bytes());
        req.extend_from_slice(&IFLA_TARGET_NETNSID.to_ne_bytes());
        req.extend_from_slice(&id.to_ne_bytes());
    }
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    // SAFETY: sending our own buffer of the given length.
    if unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: reading into our own buffer of the given length.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let msg = &buf[..n as usize];
    if msg.len() < 16 {
        return Err(io::Error::other("short netlink answer"));
    }
    let ty = u16::from_ne_bytes([msg[4], msg[5]]);
    if ty == NLMSG_ERROR {
        let errno = msg
            .get(16..20)
            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        return Err(io::Error::from_raw_os_error(-errno));
    }
    if ty != RTM_NEWLINK || msg.len() < 32 {
        return Err(io::Error::other("unexpected netlink answer"));
    }
    let total = (u32::from_ne_bytes([msg[0], msg[1], msg[2], msg[3]]) as usize).min(msg.len());
    Ok(parse_link(&msg[32..total]))
}

/// What an uplink's veth peer looks like, for the XDP decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Not a veth.
    None,
    /// A veth whose peer runs an XDP program (XDP_TX towards it is delivered).
    WithXdp,
    /// A veth whose peer runs no XDP program: XDP_TX loses frames (unless the peer has NAPI
    /// through GRO, which cannot be seen from here).
    WithoutXdp,
    /// A veth whose peer could not be queried.
    Unknown,
}

/// What kind of device `ifindex` is: its link kind and, for a veth, its peer.
pub fn classify(ifindex: u32) -> io::Result<(Option<String>, Peer)> {
    let info = link_info(ifindex, None)?;
    if info.kind.as_deref() != Some("veth") {
        return Ok((info.kind, Peer::None));
    }
    let peer = match info.link {
        Some(idx) if idx != 0 => match link_info(idx, info.link_netnsid) {
            Ok(p) if p.xdp_attached != 0 => Peer::WithXdp,
            Ok(_) => Peer::WithoutXdp,
            Err(_) => Peer::Unknown,
        },
        _ => Peer::Unknown,
    };
    Ok((info.kind, peer))
}

#[cfg(test)]
mod link_tests {
    use super::*;

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = ((4 + payload.len()) as u16).to_ne_bytes().to_vec();
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while !v.len().is_multiple_of(4) {
            v.push(0);
        }
        v
    }

    #[test]
    fn link_attributes_are_parsed_with_nesting_and_padding() {
        let mut buf = attr(3, b"eth0\0");
        buf.extend(attr(IFLA_LINK, &7u32.to_ne_bytes()));
        buf.extend(attr(IFLA_LINK_NETNSID, &3i32.to_ne_bytes()));
        // Nested, with NLA_F_NESTED set on the outer type.
        buf.extend(attr(
            IFLA_LINKINFO | 0x8000,
            &attr(IFLA_INFO_KIND, b"veth\0"),
        ));
        buf.extend(attr(IFLA_XDP | 0x8000, &attr(IFLA_XDP_ATTACHED, &[1])));
        let info = parse_link(&buf);
        assert_eq!(
            info,
            LinkInfo {
                kind: Some("veth".into()),
                link: Some(7),
                link_netnsid: Some(3),
                xdp_attached: 1,
            }
        );
        // Truncated input stops cleanly.
        assert_eq!(parse_link(&buf[..3]), LinkInfo::default());
    }

    #[test]
    fn the_loopback_device_is_not_a_veth() {
        let (kind, peer) = classify(1).unwrap();
        assert_eq!(peer, Peer::None, "{kind:?}");
    }
}
