//! `xlb explain`: builds the described packet and runs it, with BPF_PROG_TEST_RUN, through a
//! private copy of the programs that reads the live pinned maps but writes nothing but its
//! decision (`xlb_trace`): which frontend matched, which backend was chosen and why, the
//! rewritten packet and the verdict. Live conntrack, affinity and counters are untouched.

use std::{
    ffi::CString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

use aya::{
    Ebpf,
    maps::{Map, MapData, PerCpuArray, PerCpuValues},
    programs::{TestRun, TestRunOptions},
};
use lb_common::{Trace, ct_flags, drop_reason, map_names as names, prog_names, selection};
use serde::Serialize;

use super::{
    Format,
    service::{endpoint_text, scope_text},
};
use crate::{
    bpf::{
        self, Capacities, Role,
        maps::{Maps, info_name},
    },
    model::Protocol,
};

/// What to explain.
#[derive(Clone, Debug)]
pub struct Request {
    pub proto: Protocol,
    /// Source and destination, of one family.
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Device the packet arrives on; decides the hook. Default: the first pod device.
    pub device: Option<String>,
    /// TCP: send a plain ACK (a packet of an established connection) instead of a SYN.
    pub established: bool,
}

/// One hook's decision.
#[derive(Serialize, Debug)]
pub struct Step {
    pub program: &'static str,
    pub frontend: Option<String>,
    pub scope: Option<&'static str>,
    pub service: Option<String>,
    pub reply_of_tracked_flow: bool,
    pub decision: String,
    pub backend: Option<String>,
    pub backend_id: u32,
    pub slot: Option<u32>,
    pub flow_hash: Option<String>,
    pub translation: Vec<&'static str>,
    pub drop_reason: Option<&'static str>,
    pub packet_after: String,
    pub verdict: String,
}

/// The whole explanation.
#[derive(Serialize, Debug)]
pub struct Explanation {
    pub packet: String,
    pub device: String,
    pub steps: Vec<Step>,
}

fn ifindex(name: &str) -> u32 {
    CString::new(name)
        // SAFETY: a valid C string; the call only reads it.
        .map_or(0, |c| unsafe { libc::if_nametoindex(c.as_ptr()) })
}

fn ifname(index: u32) -> String {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes as the call requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return format!("ifindex {index}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into `buf`.
    unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// An Ethernet/IPv4-or-IPv6/TCP-UDP-SCTP packet with valid checksums.
fn build(req: &Request) -> Vec<u8> {
    use lb_common::csum;
    let (proto, l4len) = match req.proto {
        Protocol::Udp => (17u8, 8usize),
        _ => (if req.proto == Protocol::Sctp { 132 } else { 6 }, 20),
    };
    let (mut p, l4_off, pseudo) = match (req.src.ip(), req.dst.ip()) {
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut p = vec![0u8; 14 + 40 + l4len];
            p[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            let ip = &mut p[14..54];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
            ip[6] = proto;
            ip[7] = 64;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&(l4len as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
            (p, 54, pseudo)
        }
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut p = vec![0u8; 14 + 20 + l4len];
            p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let ip = &mut p[14..34];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + l4len) as u16).to_be_bytes());
            ip[6] = 0x40;
            ip[8] = 64;
            ip[9] = proto;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let c = !csum::fold(csum::sum_be(ip, 0));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&src.octets());
            pseudo.extend_from_slice(&dst.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(l4len as u16).to_be_bytes());
            (p, 34, pseudo)
        }
        // Mixed families: refused by `explain` before it builds a packet.
        _ => return Vec::new(),
    };
    let l4 = &mut p[l4_off..];
    l4[0..2].copy_from_slice(&req.src.port().to_be_bytes());
    l4[2..4].copy_from_slice(&req.dst.port().to_be_bytes());
    match proto {
        6 => {
            l4[12] = 5 << 4;
            l4[13] = if req.established { 0x10 } else { 0x02 };
            l4[14..16].copy_from_slice(&65535u16.to_be_bytes());
            let c = !csum::fold(csum::sum_be(l4, csum::sum_be(&pseudo, 0)));
            l4[16..18].copy_from_slice(&c.to_be_bytes());
        }
        17 => {
            l4[4..6].copy_from_slice(&(l4len as u16).to_be_bytes());
            let c = !csum::fold(csum::sum_be(l4, csum::sum_be(&pseudo, 0)));
            l4[6..8].copy_from_slice(&c.to_be_bytes());
        }
        _ => {}
    }
    p
}

/// A packet's addresses, protocol and where its L4 header starts (IPv4 or IPv6 without
/// extension headers, as `build` and the errors the datapath sends make them).
fn headers(p: &[u8]) -> Option<(IpAddr, IpAddr, u8, usize)> {
    match u16::from_be_bytes([*p.get(12)?, *p.get(13)?]) {
        0x0800 if p.len() >= 34 => Some((
            Ipv4Addr::new(p[26], p[27], p[28], p[29]).into(),
            Ipv4Addr::new(p[30], p[31], p[32], p[33]).into(),
            p[23],
            34,
        )),
        0x86dd if p.len() >= 54 => {
            let a = |o: usize| -> IpAddr {
                let mut b = [0u8; 16];
                b.copy_from_slice(&p[o..o + 16]);
                Ipv6Addr::from(b).into()
            };
            Some((a(22), a(38), p[20], 54))
        }
        _ => None,
    }
}

/// True if the packet is an ICMP or ICMPv6 error the datapath built.
fn is_icmp(p: &[u8]) -> bool {
    headers(p).is_some_and(|(_, _, proto, _)| {
        proto == lb_common::proto::ICMP || proto == lb_common::proto::ICMPV6
    })
}

fn describe(p: &[u8]) -> String {
    let Some((src, dst, proto, l4)) = headers(p).filter(|h| p.len() >= h.3 + 8) else {
        return format!("{} bytes", p.len());
    };
    let (t, c) = (p[l4], p[l4 + 1]);
    let word = |o: usize| u16::from_be_bytes([p[l4 + o], p[l4 + o + 1]]);
    if proto == lb_common::proto::ICMP {
        let what = match (t, c) {
            (3, 3) => "port unreachable".to_owned(),
            (3, 4) => format!("fragmentation needed (MTU {})", word(6)),
            (11, _) => "time exceeded".to_owned(),
            (t, c) => format!("type {t} code {c}"),
        };
        return format!("ICMP {what} {src} -> {dst}");
    }
    if proto == lb_common::proto::ICMPV6 {
        let what = match (t, c) {
            (1, 4) => "port unreachable".to_owned(),
            (2, _) => format!("packet too big (MTU {})", word(6)),
            (3, _) => "time exceeded".to_owned(),
            (t, c) => format!("type {t} code {c}"),
        };
        return format!("ICMPv6 {what} {src} -> {dst}");
    }
    let name = Protocol::from_number(proto).map_or_else(|| proto.to_string(), |p| p.to_string());
    format!(
        "{name} {} -> {}",
        SocketAddr::new(src, word(0)),
        SocketAddr::new(dst, word(2))
    )
}

fn verdict_name(program: &str, code: i32, out_ifindex: u32) -> String {
    if program == prog_names::XDP {
        return match code {
            1 => "XDP_DROP".to_owned(),
            2 => "XDP_PASS (to tc / the stack)".to_owned(),
            3 => format!("XDP_TX (back out of {})", ifname(out_ifindex)),
            c => format!("XDP action {c}"),
        };
    }
    match code {
        -1 => "pass (TCX_NEXT: to the stack)".to_owned(),
        2 => "drop (TC_ACT_SHOT)".to_owned(),
        7 => format!("redirect to {} (bpf_redirect_neigh)", ifname(out_ifindex)),
        c => format!("tc action {c}"),
    }
}

/// Runs one program on the packet and reads its decision.
fn run_one(
    ebpf: &mut Ebpf,
    trace: &mut PerCpuArray<MapData, Trace>,
    maps: &Maps,
    program: &'static str,
    pkt: &[u8],
    ifx: u32,
) -> anyhow::Result<(Step, Vec<u8>)> {
    let ncpu = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    trace.set(0, PerCpuValues::try_from(vec![Trace::default(); ncpu])?, 0)?;
    let xdp = program == prog_names::XDP;
    let mut ctx = vec![0u8; if xdp { 24 } else { 44 }];
    if xdp {
        ctx[4..8].copy_from_slice(&(pkt.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifx.to_ne_bytes());
    } else {
        ctx[40..44].copy_from_slice(&ifx.to_ne_bytes());
    }
    let mut out = vec![0u8; pkt.len() + 64];
    let opts = TestRunOptions {
        data_in: Some(pkt),
        data_out: Some(&mut out),
        ctx_in: if ifx > 1 { Some(&ctx) } else { None },
        ..Default::default()
    };
    let r = if xdp {
        bpf::xdp(ebpf)?.test_run(opts)?
    } else {
        bpf::classifier(ebpf, program)?.test_run(opts)?
    };
    out.truncate(r.data_size_out as usize);
    let t = trace
        .get(&0, 0)?
        .iter()
        .copied()
        .find(|t| t.parsed != 0)
        .unwrap_or_default();
    let names: std::collections::HashMap<u32, String> = maps
        .infos()?
        .into_iter()
        .map(|(id, i)| (id, info_name(&i)))
        .collect();
    let backend = if t.backend_id != 0 {
        maps.wide_backends()?
            .into_iter()
            .find(|(id, _)| *id == t.backend_id)
            .map(|(_, b)| SocketAddr::new(crate::addr::ip(&b.addr), b.port).to_string())
    } else {
        None
    };
    let svc = (t.svc_id != 0).then(|| {
        names
            .get(&t.svc_id)
            .cloned()
            .unwrap_or_else(|| format!("#{}", t.svc_id))
    });
    let (lut_size, fe_flags) = maps
        .wide_frontends()?
        .into_iter()
        .find(|(_, v)| v.svc_id == t.svc_id)
        .map_or((0, 0), |(_, v)| (v.lut_size, v.flags));
    let decision = decision(&t, lut_size, xdp, &out);
    let mut translation = Vec::new();
    for (bit, what) in [
        (ct_flags::XLATE_DST, "destination → backend"),
        (ct_flags::SNAT, "source → node address (SNAT)"),
        (ct_flags::HAIRPIN, "source → hairpin address"),
    ] {
        if t.ct_flags & bit != 0 && t.reply == 0 {
            translation.push(what);
        }
    }
    let frontend = (t.scope != 0xff && t.parsed != 0 && t.reply == 0 && t.svc_id != 0)
        .then(|| headers(pkt))
        .flatten()
        .map(|(_, dst, proto, l4)| {
            endpoint_text(dst, u16::from_be_bytes([pkt[l4 + 2], pkt[l4 + 3]]), proto)
        });
    let step = Step {
        program,
        frontend,
        scope: (t.scope != 0xff && t.parsed != 0 && t.svc_id != 0 && t.reply == 0)
            .then(|| scope_text(t.scope, fe_flags)),
        service: svc,
        reply_of_tracked_flow: t.reply != 0,
        decision,
        backend,
        backend_id: t.backend_id,
        slot: matches!(t.selection, selection::MAGLEV | selection::RANDOM).then_some(t.slot),
        flow_hash: (t.selection == selection::MAGLEV).then(|| format!("{:#010x}", t.hash)),
        translation,
        drop_reason: (t.drop_reason != 0).then(|| drop_reason::name(t.drop_reason)),
        packet_after: describe(&out),
        verdict: verdict_name(program, r.return_value as i32, t.out_ifindex),
    };
    Ok((step, out))
}

/// What the datapath decided for the packet, in words, from its trace (`out`: the packet it
/// left; `lut_size`: the service's table size).
fn decision(t: &Trace, lut_size: u32, xdp: bool, out: &[u8]) -> String {
    if t.parsed == 0 {
        "not a TCP/UDP/SCTP packet: passed untouched".to_owned()
    } else if t.drop_reason == drop_reason::NO_BACKEND && !xdp && is_icmp(out) {
        "rejected: no endpoint (ICMP port unreachable back to the client, as kube-proxy)".to_owned()
    } else if t.drop_reason != 0 {
        format!("dropped: {}", drop_reason::name(t.drop_reason))
    } else if t.reply != 0 {
        "reply of a tracked flow: source restored to the frontend".to_owned()
    } else if t.svc_id == 0 {
        "no frontend and no tracked flow: not for a service".to_owned()
    } else {
        match t.selection {
            selection::CONNTRACK => "conntrack hit: the flow keeps its backend".to_owned(),
            selection::AFFINITY => "new flow: ClientIP session affinity".to_owned(),
            selection::MAGLEV => format!(
                "new flow: Maglev slot {} of {lut_size} (flow hash {:#010x})",
                t.slot, t.hash
            ),
            selection::RANDOM => format!("new flow: random slot {} of {lut_size}", t.slot),
            _ => "left to the next hook (XDP cannot deliver it itself)".to_owned(),
        }
    }
}

/// Explains what the datapath does with the packet.
pub fn explain(dir: &Path, req: &Request) -> anyhow::Result<Explanation> {
    if req.src.is_ipv4() != req.dst.is_ipv4() {
        anyhow::bail!(
            "--src {} and --dst {} are of different address families",
            req.src,
            req.dst
        );
    }
    let maps = Maps::open(dir)?;
    let with_program: Vec<u32> = [Role::Pod, Role::Host, Role::Xdp]
        .into_iter()
        .flat_map(|r| bpf::attached(dir, r))
        .collect();
    let names = || {
        let mut v: Vec<String> = with_program.iter().map(|i| ifname(*i)).collect();
        v.sort();
        v.dedup();
        v.join(", ")
    };
    let device = match &req.device {
        Some(d) => d.clone(),
        None => bpf::attached(dir, Role::Pod)
            .into_iter()
            .chain(bpf::attached(dir, Role::Host))
            .map(ifname)
            .next()
            .ok_or_else(|| {
                anyhow::anyhow!("no device has an xlb program: nothing to explain a packet with")
            })?,
    };
    let ifx = ifindex(&device);
    if ifx == 0 {
        anyhow::bail!("--device {device}: no such device in this network namespace");
    }
    if !with_program.contains(&ifx) {
        anyhow::bail!(
            "--device {device}: no xlb program is attached there (devices with one: {})",
            names()
        );
    }
    let has_xdp = bpf::attached(dir, Role::Xdp).contains(&ifx);
    let uplink = has_xdp || bpf::attached(dir, Role::Host).contains(&ifx);
    let mut ebpf = bpf::load(dir, Capacities::default(), true)?;
    let mut trace: PerCpuArray<MapData, Trace> =
        PerCpuArray::try_from(Map::PerCpuArray(MapData::from_pin(dir.join(names::TRACE))?))?;
    let pkt = build(req);
    let mut steps = Vec::new();
    if uplink {
        // XDP first where it runs; what it passes untouched goes on to tc.
        let deferred = if has_xdp {
            let (step, out) = run_one(&mut ebpf, &mut trace, &maps, prog_names::XDP, &pkt, ifx)?;
            let deferred = out == pkt && step.verdict.starts_with("XDP_PASS");
            steps.push(step);
            deferred
        } else {
            true
        };
        if deferred {
            let (step, _) = run_one(
                &mut ebpf,
                &mut trace,
                &maps,
                prog_names::HOST_INGRESS,
                &pkt,
                ifx,
            )?;
            steps.push(step);
        }
    } else {
        let (step, _) = run_one(
            &mut ebpf,
            &mut trace,
            &maps,
            prog_names::POD_INGRESS,
            &pkt,
            ifx,
        )?;
        steps.push(step);
    }
    Ok(Explanation {
        packet: describe(&pkt),
        device,
        steps,
    })
}

/// Renders an explanation.
pub fn render(e: &Explanation, format: Format) -> anyhow::Result<String> {
    format.render(e, |_| text(e))
}

fn text(e: &Explanation) -> String {
    let mut s = format!("packet: {} arriving on {}\n", e.packet, e.device);
    for st in &e.steps {
        s.push_str(&format!("\n[{}]\n", st.program));
        if let Some(f) = &st.frontend {
            s.push_str(&format!(
                "  frontend:    {f} (scope: {})\n",
                st.scope.unwrap_or("?")
            ));
        }
        if let Some(svc) = &st.service {
            s.push_str(&format!("  service:     {svc}\n"));
        }
        s.push_str(&format!("  decision:    {}\n", st.decision));
        if let Some(b) = &st.backend {
            s.push_str(&format!("  backend:     {b} (id {})\n", st.backend_id));
        }
        if !st.translation.is_empty() {
            s.push_str(&format!("  rewrites:    {}\n", st.translation.join(", ")));
        }
        s.push_str(&format!("  packet out:  {}\n", st.packet_after));
        s.push_str(&format!("  verdict:     {}\n", st.verdict));
    }
    s
}
