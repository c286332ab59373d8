//! Path MTU and fragments through the balancer with real traffic: a client behind a router,
//! the balancer node (standalone, routed: the client's address preserved) and a backend pod,
//! with an MTU smaller than the ends' on either side. Bulk TCP must complete both ways
//! (path-MTU discovery through the balancer), and a UDP datagram larger than the MTU must
//! arrive whole both ways (fragments translated). Bulk TCP over IPv6 too (ICMPv6 packet too
//! big, translated and sent by the balancer).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use xlb_tests::{
    agent::{Agent, PinDir},
    files::WorkDir,
    netns::{Netns, require_root, unique_tag},
    topology::Node,
};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 2);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x50, 0, 0, 0, 0, 0x50);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x10, 1, 0, 0, 0, 2);
const SMALL: &str = "1280";

struct Bed {
    client: Netns,
    router: Netns,
    node: Node,
    agent: Agent,
    _pins: PinDir,
    _dir: WorkDir,
}

/// client (10.10.1.2, fd00:10:10:1::2) — router — node (10.10.2.2, fd00:10:10:2::2, xlb on
/// eth0) — pod 10.244.1.11 (`Pod::ip6`).
fn bed() -> Bed {
    require_root();
    let tag = unique_tag();
    let client = Netns::new(&format!("xlbt-{tag}-cl"));
    let router = Netns::new(&format!("xlbt-{tag}-rt"));
    let mut node = Node::new(&tag, "n1", 1);
    node.add_pod(1);
    node.dual_stack();
    let link = |a: &Netns, an: &str, b: &Netns, bn: &str, a_ip: &str, b_ip: &str| {
        a.ip(&[
            "link", "add", an, "type", "veth", "peer", "name", bn, "netns", &b.name,
        ]);
        a.ip(&["addr", "add", a_ip, "dev", an]);
        b.ip(&["addr", "add", b_ip, "dev", bn]);
        // The same link's IPv6 addresses: fd00:<the IPv4 /24's third octets>::<last octet>.
        for (ns, dev, ip) in [(a, an, a_ip), (b, bn, b_ip)] {
            let o: Vec<&str> = ip.trim_end_matches("/24").split('.').collect();
            let v6 = format!("fd00:{}:{}:{}::{}/64", o[0], o[1], o[2], o[3]);
            ns.ip(&["-6", "addr", "add", &v6, "dev", dev, "nodad"]);
        }
        a.ip(&["link", "set", an, "up"]);
        b.ip(&["link", "set", bn, "up"]);
        for (ns, dev) in [(a, an), (b, bn)] {
            // Full checksums on the wire, as a NIC delivers.
            ns.exec(&["ethtool", "-K", dev, "tx", "off"]);
        }
    };
    link(
        &client,
        "eth0",
        &router,
        "c0",
        "10.10.1.2/24",
        "10.10.1.1/24",
    );
    link(
        &router,
        "n0",
        &node.ns,
        "eth0",
        "10.10.2.1/24",
        "10.10.2.2/24",
    );
    router.sysctl("net.ipv4.ip_forward", "1");
    router.sysctl("net.ipv6.conf.all.forwarding", "1");
    client.ip(&["route", "add", "default", "via", "10.10.1.1"]);
    client.ip(&["-6", "route", "add", "default", "via", "fd00:10:10:1::1"]);
    router.ip(&["route", "add", &format!("{VIP}/32"), "via", "10.10.2.2"]);
    router.ip(&[
        "-6",
        "route",
        "add",
        &format!("{VIP6}/128"),
        "via",
        "fd00:10:10:2::2",
    ]);
    node.ns
        .ip(&["route", "add", "10.10.1.0/24", "via", "10.10.2.1"]);
    node.ns.ip(&[
        "-6",
        "route",
        "add",
        "fd00:10:10:1::/64",
        "via",
        "fd00:10:10:2::1",
    ]);
    client.sysctl("net.ipv4.tcp_max_tw_buckets", "0");
    let dir = WorkDir::new(&tag);
    dir.write(
        "svc.yaml",
        &format!(
            "services:\n  - name: bulk\n    frontend: {VIP}:80/tcp\n    clientIP: preserve\n    backends: [10.244.1.11:8080]\n  - name: big\n    frontend: {VIP}:53/udp\n    clientIP: preserve\n    backends: [10.244.1.11:5353]\n  - name: bulk6\n    frontend: \"[{VIP6}]:80/tcp\"\n    clientIP: preserve\n    backends: [\"[{ip6}]:8080\"]\n  - name: big6\n    frontend: \"[{VIP6}]:53/udp\"\n    clientIP: preserve\n    backends: [\"[{ip6}]:5353\"]\n",
            ip6 = node.pods[0].ip6
        ),
    );
    let pins = PinDir::new(&tag);
    let agent = Agent::start(
        &node.ns,
        &pins,
        &[
            "--services",
            dir.path.to_str().unwrap(),
            "--devices",
            "eth0",
            "--pod-devices",
            "xp*",
            "--node-ip",
            "10.10.2.2,fd00:10:10:2::2",
        ],
    );
    agent.wait_active("bulk", 1);
    agent.wait_active("bulk6", 1);
    agent.wait_active("big6", 1);
    agent.wait_active("big", 1);
    Bed {
        client,
        router,
        node,
        agent,
        _pins: pins,
        _dir: dir,
    }
}

/// A backend on `addr`:8080 answering "get N" with N bytes and "put N" (then N bytes) with
/// "ok N".
fn serve_bulk(pod: &Netns, addr: IpAddr) -> std::thread::JoinHandle<()> {
    pod.spawn(move || {
        let l = TcpListener::bind(SocketAddr::new(addr, 8080)).expect("bind");
        l.set_nonblocking(false).ok();
        {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while !line.ends_with(b"\n") && s.read(&mut b).unwrap_or(0) == 1 {
                line.push(b[0]);
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            let mut it = text.split_whitespace();
            let (op, n) = (
                it.next().unwrap_or(""),
                it.next().and_then(|n| n.parse::<usize>().ok()).unwrap_or(0),
            );
            if op == "get" {
                let _ = s.write_all(&vec![b'x'; n]);
            } else {
                let mut got = 0;
                let mut buf = vec![0u8; 65536];
                while got < n {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => got += k,
                    }
                }
                let _ = s.write_all(format!("ok {got}\n").as_bytes());
            }
        }
    })
}

/// Runs one bulk exchange from the client to `vip`:80; returns bytes received (get) or
/// acknowledged (put).
fn exchange(client: &Netns, vip: IpAddr, op: &'static str, n: usize) -> std::io::Result<usize> {
    client.run(move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(vip, 80), Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(15)))?;
        s.set_write_timeout(Some(Duration::from_secs(15)))?;
        s.write_all(format!("{op} {n}\n").as_bytes())?;
        if op == "put" {
            s.write_all(&vec![b'y'; n])?;
            let mut reply = String::new();
            s.read_to_string(&mut reply)?;
            return reply
                .trim()
                .strip_prefix("ok ")
                .and_then(|k| k.parse().ok())
                .ok_or_else(|| std::io::Error::other(reply.clone()));
        }
        let mut got = 0;
        let mut buf = vec![0u8; 65536];
        loop {
            match s.read(&mut buf)? {
                0 => return Ok(got),
                k => got += k,
            }
        }
    })
}

/// Bytes of each bulk exchange.
const N: usize = 2_000_000;

// Each direction on a bed of its own: an end that learned the path MTU once advertises a
// smaller MSS from then on, and the other direction would never need the balancer's help.

/// The pod's address of `vip`'s family.
fn backend(b: &Bed, vip: IpAddr) -> IpAddr {
    let pod = &b.node.pods[0];
    if vip.is_ipv4() {
        pod.ip.into()
    } else {
        pod.ip6.into()
    }
}

/// A router between the balancer and the client has a smaller MTU on its client side than
/// either end. It answers the backend's full-size segments (sent from the VIP) with
/// fragmentation needed / packet too big, which the balancer hands to the backend.
fn download(vip: IpAddr) {
    let b = bed();
    let server = serve_bulk(&b.node.pods[0].ns, backend(&b, vip));
    b.router.ip(&["link", "set", "c0", "mtu", SMALL]);
    let got = exchange(&b.client, vip, "get", N).expect("download through a smaller MTU stalled");
    assert_eq!(got, N);
    assert!(
        b.agent.counter("icmp_xlate") >= 1,
        "the router's error was not translated"
    );
    drop(server);
}

/// The balancer's own next hop to the backend has the smaller MTU: it answers the client's
/// full-size segments itself with fragmentation needed / packet too big, from the VIP.
fn upload(vip: IpAddr) {
    let b = bed();
    let server = serve_bulk(&b.node.pods[0].ns, backend(&b, vip));
    b.node.ns.ip(&["link", "set", "xp1", "mtu", SMALL]);
    let acked = exchange(&b.client, vip, "put", N).expect("upload through a smaller MTU stalled");
    assert_eq!(acked, N);
    assert!(b.agent.counter("drop_frag_needed") >= 1);
    assert!(b.agent.counter("icmp_sent") >= 1);
    drop(server);
}

#[test]
fn a_bulk_download_finds_the_path_mtu_past_the_balancer() {
    download(VIP.into());
}

#[test]
fn a_bulk_upload_finds_the_balancers_smaller_next_hop_mtu() {
    upload(VIP.into());
}

#[test]
fn an_ipv6_bulk_download_gets_the_routers_packet_too_big_to_the_backend() {
    download(VIP6.into());
}

#[test]
fn an_ipv6_bulk_upload_gets_packet_too_big_from_the_balancer() {
    upload(VIP6.into());
}

/// A 3000-byte query to `vip`:53 and a 4000-byte answer, both fragmented by their senders
/// (the MTU is 1500): each arrives whole, the client's address preserved.
fn big_datagrams(vip: IpAddr, client: IpAddr) {
    let b = bed();
    let bind = SocketAddr::new(backend(&b, vip), 5353);
    // Bound before the client sends (a socket keeps the namespace it was made in), so the query
    // cannot arrive before anyone listens.
    let s = b.node.pods[0]
        .ns
        .run(move || UdpSocket::bind(bind).expect("bind"));
    let server = std::thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = vec![0u8; 65536];
        if let Ok((n, peer)) = s.recv_from(&mut buf) {
            // An answer as big as a large DNS response over UDP, sent to the client as seen.
            let answer = vec![b'a'; 4000];
            let _ = s.send_to(&answer, peer);
            return (n, peer);
        }
        (0, SocketAddr::from(([0, 0, 0, 0], 0)))
    });
    let to = SocketAddr::new(vip, 53);
    let (from, len) = b.client.run(move || {
        let s = UdpSocket::bind(xlb_tests::traffic::any_port(to)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(&vec![b'q'; 3000], to).unwrap();
        let mut buf = vec![0u8; 65536];
        let (n, from) = s.recv_from(&mut buf).expect("no answer: fragments lost");
        (from, n)
    });
    let (query_len, seen) = server.join().unwrap();
    assert_eq!(query_len, 3000, "the query arrived in pieces");
    assert_eq!(seen.ip(), client, "the client's address was not preserved");
    assert_eq!((from, len), (to, 4000));
    assert!(b.agent.counter("frag_xlate") >= 4);
}

#[test]
fn a_udp_datagram_larger_than_the_mtu_crosses_the_balancer_whole_both_ways() {
    big_datagrams(VIP.into(), CLIENT.into());
}

#[test]
fn an_ipv6_udp_datagram_larger_than_the_mtu_crosses_the_balancer_whole_both_ways() {
    big_datagrams(VIP6.into(), CLIENT6.into());
}
