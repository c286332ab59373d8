//! `sock_diag` netlink (`NETLINK_SOCK_DIAG`): lists the UDP sockets (IPv4 and IPv6) of the
//! agent's network namespace and aborts those connected to given addresses (`SOCK_DESTROY`, what `ss -K`
//! does). A host-network UDP socket connected to a ClusterIP is connected to a backend at
//! `connect()` (socket-level translation); when that backend leaves, aborting the socket makes
//! its next `send()` fail (`ECONNABORTED`) instead of talking to a dead backend, and the
//! application's reconnect picks a live one.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `sock_diag` failed.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("sock_diag {op}: {source}")]
    Io { op: &'static str, source: io::Error },
    #[error("sock_diag {op}: {message}")]
    Protocol { op: &'static str, message: String },
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// `TCP_ESTABLISHED`: for UDP, a connected socket.
const STATE_CONNECTED: u8 = 1;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_sockid`.
const SOCKID: usize = 48;
/// `struct inet_diag_req_v2`.
const REQ: usize = 8 + SOCKID;
/// `struct inet_diag_msg` (up to and including `idiag_inode`).
const MSG: usize = 4 + SOCKID + 20;

/// A UDP socket as `sock_diag` names it: its `inet_diag_sockid` bytes, peer and cookie.
struct UdpSocket {
    /// `AF_INET` or `AF_INET6`.
    family: u8,
    id: [u8; SOCKID],
    /// The peer; an IPv6 socket's IPv4-mapped peer is given as the IPv4 address it maps.
    dst: IpAddr,
    dport: u16,
    cookie: u64,
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> DiagError {
    move |source| DiagError::Io { op, source }
}

/// A netlink `sock_diag` request: header, then `inet_diag_req_v2` for UDP of `family` in any
/// state.
fn request(kind: u16, flags: u16, seq: u32, family: u8, id: &[u8; SOCKID]) -> Vec<u8> {
    let len = (NLMSG_HDR + REQ) as u32;
    let mut m = Vec::with_capacity(len as usize);
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    // family, protocol, ext, pad, states (all)
    m.extend_from_slice(&[family, libc::IPPROTO_UDP as u8, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes());
    m.extend_from_slice(id);
    m
}

fn open() -> Result<OwnedFd, DiagError> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io_err("socket")(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The agent calls this from its event loop: a kernel that never answers must not hang it.
    let timeout = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a correctly sized timeval on an open socket.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io_err("setsockopt")(io::Error::last_os_error()));
    }
    Ok(fd)
}

fn send(fd: &OwnedFd, msg: &[u8], op: &'static str) -> Result<(), DiagError> {
    // SAFETY: `msg` is valid for its length; the kernel is the default destination.
    let n = unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if n < 0 {
        return Err(io_err(op)(io::Error::last_os_error()));
    }
    Ok(())
}

/// Reads netlink messages until `NLMSG_DONE` or an ack, handing each payload of `kind` to
/// `f`. An `NLMSG_ERROR` with a non-zero code is the error.
fn receive(fd: &OwnedFd, op: &'static str, mut f: impl FnMut(u16, &[u8])) -> Result<(), DiagError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: `buf` is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io_err(op)(io::Error::last_os_error()));
        }
        let mut rest = &buf[..n as usize];
        while rest.len() >= NLMSG_HDR {
            let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let kind = u16::from_ne_bytes([rest[4], rest[5]]);
            if len < NLMSG_HDR || len > rest.len() {
                return Err(DiagError::Protocol {
                    op,
                    message: format!("message of {len} bytes in a read of {}", rest.len()),
                });
            }
            let payload = &rest[NLMSG_HDR..len];
            let code = || {
                payload
                    .get(..4)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            };
            match kind {
                // A dump that failed part-way ends with its error code.
                NLMSG_DONE if code() < 0 => {
                    return Err(io_err(op)(io::Error::from_raw_os_error(-code())));
                }
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = code();
                    if code == 0 {
                        return Ok(());
                    }
                    return Err(io_err(op)(io::Error::from_raw_os_error(-code)));
                }
                _ => f(kind, payload),
            }
            rest = &rest[len.next_multiple_of(4).min(rest.len())..];
        }
    }
}

/// Every connected UDP socket of `family` of this network namespace.
fn connected_udp(fd: &OwnedFd, family: u8) -> Result<Vec<UdpSocket>, DiagError> {
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    send(
        fd,
        &request(SOCK_DIAG_BY_FAMILY, flags, 1, family, &[0; SOCKID]),
        "dump",
    )?;
    let mut out = Vec::new();
    receive(fd, "dump", |kind, p| {
        if kind != SOCK_DIAG_BY_FAMILY || p.len() < MSG || p[1] != STATE_CONNECTED {
            return;
        }
        let mut id = [0u8; SOCKID];
        id.copy_from_slice(&p[4..4 + SOCKID]);
        let half =
            |o: usize| u64::from(u32::from_ne_bytes([id[o], id[o + 1], id[o + 2], id[o + 3]]));
        out.push(UdpSocket {
            family,
            dport: u16::from_be_bytes([id[2], id[3]]),
            dst: peer(family, &id),
            cookie: half(40) | (half(44) << 32),
            id,
        });
    })?;
    Ok(out)
}

/// The peer address of an `inet_diag_sockid` (`idiag_dst`, 16 bytes at offset 20, of which
/// IPv4 uses the first 4).
fn peer(family: u8, id: &[u8; SOCKID]) -> IpAddr {
    if i32::from(family) == libc::AF_INET {
        return Ipv4Addr::new(id[20], id[21], id[22], id[23]).into();
    }
    let mut a = [0u8; 16];
    a.copy_from_slice(&id[20..36]);
    Ipv6Addr::from(a).to_canonical()
}

/// Aborts every connected UDP socket (both families) of this network namespace that
/// `select(cookie, peer address, peer port)` picks; returns how many it aborted. A socket gone
/// meanwhile is not an error.
pub fn abort_connected_udp(select: impl Fn(u64, IpAddr, u16) -> bool) -> Result<usize, DiagError> {
    let fd = open()?;
    let mut sockets = connected_udp(&fd, libc::AF_INET as u8)?;
    sockets.extend(connected_udp(&fd, libc::AF_INET6 as u8)?);
    let mut aborted = 0;
    for (seq, s) in (2u32..).zip(sockets) {
        if !select(s.cookie, s.dst, s.dport) {
            continue;
        }
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        send(
            &fd,
            &request(SOCK_DESTROY, flags, seq, s.family, &s.id),
            "destroy",
        )?;
        match receive(&fd, "destroy", |_, _| {}) {
            Ok(()) => aborted += 1,
            Err(DiagError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(aborted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_kernels_layout() {
        let m = request(SOCK_DESTROY, 5, 9, libc::AF_INET as u8, &[7; SOCKID]);
        assert_eq!(m.len(), 72);
        assert_eq!(u32::from_ne_bytes([m[0], m[1], m[2], m[3]]), 72);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), SOCK_DESTROY);
        assert_eq!(&m[16..20], &[2, 17, 0, 0]);
        assert_eq!(&m[24..], &[7; SOCKID]);
    }

    #[test]
    fn peers_of_both_families_are_read_and_mapped_ones_are_ipv4() {
        let mut id = [0u8; SOCKID];
        id[20..24].copy_from_slice(&[10, 96, 0, 10]);
        assert_eq!(
            peer(libc::AF_INET as u8, &id),
            IpAddr::from([10, 96, 0, 10])
        );
        let v6: Ipv6Addr = "fd00::10".parse().unwrap();
        id[20..36].copy_from_slice(&v6.octets());
        assert_eq!(peer(libc::AF_INET6 as u8, &id), IpAddr::V6(v6));
        let mapped: Ipv6Addr = "::ffff:10.96.0.10".parse().unwrap();
        id[20..36].copy_from_slice(&mapped.octets());
        assert_eq!(
            peer(libc::AF_INET6 as u8, &id),
            IpAddr::from([10, 96, 0, 10])
        );
    }
}
