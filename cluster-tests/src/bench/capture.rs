//! TCP packets on the loopback interface, stamped by the kernel as they are sent: what
//! `tcpdump` saw while a measurement ran. A figure taken from these stamps has no observer in
//! it — no client asking a node how far it got, whose own round trip would be part of the
//! answer — so it measures both proxies the same way however much their admin reads cost.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::Env;
use super::procs::{LOAD_CPU, Proc};

/// One TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Packet {
    /// Kernel timestamp, nanoseconds (wall clock; only differences mean anything).
    pub at_ns: u64,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// TCP payload bytes (0 for a bare SYN, ACK or FIN).
    pub payload: u32,
}

/// A running `tcpdump -i lo` writing to a file in the scratch directory.
#[derive(Debug)]
pub(crate) struct Capture {
    proc: Proc,
    file: PathBuf,
}

impl Capture {
    /// Starts capturing TCP on `lo` and waits until tcpdump says it is listening.
    pub(crate) fn start(env: &Env, name: &str) -> anyhow::Result<Capture> {
        let file = env.path(&format!("{name}.pcap"));
        let log = env.path(&format!("{name}.tcpdump.log"));
        let f = file.display().to_string();
        // Headers are all the figures need. Immediate mode hands each packet to tcpdump as it
        // comes and -U writes it at once: buffered, the last second's packets were lost when
        // tcpdump was stopped. -Z root keeps tcpdump able to write into the scratch directory,
        // which only we may enter.
        let args = [
            "-i",
            "lo",
            "-n",
            "--immediate-mode",
            "-s",
            "96",
            "-U",
            "-Z",
            "root",
            "--time-stamp-precision=nano",
            "-w",
            &f,
            "tcp",
        ];
        let mut proc = Proc::spawn("tcpdump", LOAD_CPU, &env.tcpdump, &args, &[], &log)?;
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            if said.contains("listening on") {
                return Ok(Capture { proc, file });
            }
            if !proc.running() || Instant::now() > end {
                proc.stop(Duration::from_secs(1));
                bail!(
                    "tcpdump did not start capturing (it needs CAP_NET_RAW, e.g. root): {}",
                    said.trim()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops tcpdump and reads what it captured.
    pub(crate) fn stop(mut self) -> anyhow::Result<Vec<Packet>> {
        self.proc.stop(Duration::from_secs(5));
        let data =
            std::fs::read(&self.file).with_context(|| format!("read {}", self.file.display()))?;
        parse_pcap(&data)
    }
}

/// The TCP/IPv4 packets of a pcap file (microsecond or nanosecond stamps; Ethernet, Linux
/// cooked v1 or v2 link headers). Other packets are skipped; a truncated record ends the list.
pub(crate) fn parse_pcap(data: &[u8]) -> anyhow::Result<Vec<Packet>> {
    let head = data.get(..24).context("pcap: shorter than its header")?;
    let magic = [head[0], head[1], head[2], head[3]];
    let (le, nanos) = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] => (true, false),
        [0x4d, 0x3c, 0xb2, 0xa1] => (true, true),
        [0xa1, 0xb2, 0xc3, 0xd4] => (false, false),
        [0xa1, 0xb2, 0x3c, 0x4d] => (false, true),
        _ => bail!("pcap: unknown magic {magic:02x?}"),
    };
    let u32_at = |b: &[u8], i: usize| -> u32 {
        let w = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    // Where the link header ends, and where in it the EtherType is.
    let (link_len, ethertype_at) = match u32_at(head, 20) {
        1 => (14, 12),
        113 => (16, 14),
        276 => (20, 0),
        other => bail!("pcap: link type {other} is not Ethernet or Linux cooked"),
    };
    let mut out = Vec::new();
    let mut at = 24;
    while let Some(rec) = data.get(at..at + 16) {
        let (sec, frac, incl) = (u32_at(rec, 0), u32_at(rec, 4), u32_at(rec, 8) as usize);
        let Some(frame) = data.get(at + 16..at + 16 + incl) else {
            break;
        };
        at += 16 + incl;
        let ns = if nanos {
            u64::from(frac)
        } else {
            u64::from(frac) * 1000
        };
        if let Some(p) = tcp_of(frame, link_len, ethertype_at) {
            out.push(Packet {
                at_ns: u64::from(sec) * 1_000_000_000 + ns,
                ..p
            });
        }
    }
    Ok(out)
}

/// The addresses and payload length of a TCP/IPv4 frame (its stamp left at 0).
fn tcp_of(frame: &[u8], link_len: usize, ethertype_at: usize) -> Option<Packet> {
    if frame.get(ethertype_at..ethertype_at + 2)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(link_len..)?;
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ihl < 20 || *ip.get(9)? != 6 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let addr = |i: usize| Some(Ipv4Addr::new(*ip.get(i)?, ip[i + 1], ip[i + 2], ip[i + 3]));
    let tcp = ip.get(ihl..)?;
    let port = |i: usize| Some(u16::from_be_bytes([*tcp.get(i)?, *tcp.get(i + 1)?]));
    let doff = usize::from(*tcp.get(12)? >> 4) * 4;
    Some(Packet {
        at_ns: 0,
        src: SocketAddrV4::new(addr(12)?, port(0)?),
        dst: SocketAddrV4::new(addr(16)?, port(2)?),
        payload: u32::try_from(total.checked_sub(ihl + doff)?).ok()?,
    })
}

/// The local addresses of the IPv4 TCP sockets each of `pids` holds, mapped to the index of the
/// pid: which process sent a captured packet, and to which process it went.
pub(crate) fn socket_owners(pids: &[u32]) -> anyhow::Result<HashMap<SocketAddrV4, usize>> {
    let mut inode_owner = HashMap::new();
    for (i, pid) in pids.iter().enumerate() {
        let dir = format!("/proc/{pid}/fd");
        for fd in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
            let Ok(link) = std::fs::read_link(fd?.path()) else {
                continue; // closed since the listing
            };
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(inode) = inode {
                inode_owner.insert(inode, i);
            }
        }
    }
    let table = std::fs::read_to_string("/proc/net/tcp").context("read /proc/net/tcp")?;
    Ok(local_addrs(&table)
        .filter_map(|(addr, inode)| Some((addr, *inode_owner.get(&inode)?)))
        .collect())
}

/// (local address, inode) of each line of `/proc/net/tcp`.
fn local_addrs(table: &str) -> impl Iterator<Item = (SocketAddrV4, u64)> + '_ {
    table.lines().skip(1).filter_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (ip, port) = cols.get(1)?.split_once(':')?;
        // The address is the kernel's 32-bit value printed as a number in host order.
        let ip = Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?.to_ne_bytes());
        let port = u16::from_str_radix(port, 16).ok()?;
        Some((SocketAddrV4::new(ip, port), cols.get(9)?.parse().ok()?))
    })
}

/// How long after node `from`'s answer to a client node `to` held what the request changed,
/// by the stamps of the packets between them.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Stamped {
    /// Per client whose exchange the capture holds whole: ms from the answer's first byte leaving
    /// `from` to `to`'s acknowledgement of the last update `from` sent it while the client
    /// waited for `to` to learn it; 0 when `to` acknowledged before the answer left.
    pub ms: Vec<f64>,
    /// Per client with an answer: ms from its request reaching `from` to the answer leaving it.
    pub answer_ms: Vec<f64>,
}

impl Stamped {
    /// Clients `to` held it for before the answer left (a value of exactly 0).
    pub(crate) fn before_answer(&self) -> usize {
        self.ms.iter().filter(|&&v| v == 0.0).count()
    }
}

/// Propagation from node `from` (answering on `web`) to node `to`, one value per client in
/// `clients`, each of which sent one request to `web` and then nothing to anywhere else until
/// `to` had learnt of it. `owners` maps socket addresses to node indexes. A client whose window
/// ends with an update not yet acknowledged (or without an answer) has no value.
///
/// A client's window runs from its request reaching `web` to its next packet to any other
/// address (or the next client's request). In it, every payload-carrying packet from `from` to
/// `to` is an update and every one back is an acknowledgement; the value is the last
/// acknowledgement that followed an update. Both proxies acknowledge a peer's update once it is
/// applied, so that is when `to` held it at the latest.
pub(crate) fn propagation(
    packets: &[Packet],
    owners: &HashMap<SocketAddrV4, usize>,
    web: SocketAddrV4,
    (from, to): (usize, usize),
    clients: &[Ipv4Addr],
) -> Stamped {
    let owner = |a: &SocketAddrV4| owners.get(a).copied();
    let request_of = |c: Ipv4Addr, from_i: usize| {
        (from_i..packets.len())
            .find(|&i| *packets[i].src.ip() == c && packets[i].dst == web && packets[i].payload > 0)
    };
    let mut out = Stamped::default();
    let mut cursor = 0;
    let mut requests = Vec::new();
    for &c in clients {
        if let Some(i) = request_of(c, cursor) {
            requests.push((c, i));
            cursor = i + 1;
        }
    }
    for (n, &(client, start)) in requests.iter().enumerate() {
        let limit = requests.get(n + 1).map_or(packets.len(), |r| r.1);
        let mut answer = None;
        let mut pending = false;
        let mut acked = None;
        for p in &packets[start + 1..limit] {
            if *p.src.ip() == client && p.dst != web {
                break;
            }
            if p.payload == 0 {
                continue;
            }
            if answer.is_none() && p.src == web && *p.dst.ip() == client {
                answer = Some(p.at_ns);
            }
            match (owner(&p.src), owner(&p.dst)) {
                (Some(s), Some(d)) if (s, d) == (from, to) => pending = true,
                (Some(s), Some(d)) if (s, d) == (to, from) && pending => {
                    pending = false;
                    acked = Some(p.at_ns);
                }
                _ => {}
            }
        }
        if let Some(answer) = answer {
            out.answer_ms
                .push(answer.saturating_sub(packets[start].at_ns) as f64 / 1e6);
        }
        // An update still unacknowledged when the window closed leaves the client without a
        // value: the earlier ack would say too little.
        if let (Some(answer), Some(acked), false) = (answer, acked, pending) {
            out.ms.push(acked.saturating_sub(answer) as f64 / 1e6);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(last: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, last), port)
    }

    /// A pcap file (nanosecond stamps, Ethernet) holding `frames` of TCP/IPv4.
    fn pcap(frames: &[(u32, u32, SocketAddrV4, SocketAddrV4, u16)]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(0xa1b2_3c4d_u32.to_le_bytes());
        f.extend([2, 0, 4, 0]);
        f.extend([0; 8]);
        f.extend(96_u32.to_le_bytes());
        f.extend(1_u32.to_le_bytes());
        for &(sec, ns, src, dst, payload) in frames {
            let mut frame = vec![0; 12];
            frame.extend([0x08, 0x00]);
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0];
            ip[2..4].copy_from_slice(&(40 + payload).to_be_bytes());
            ip.extend(src.ip().octets());
            ip.extend(dst.ip().octets());
            let mut tcp = vec![0; 20];
            tcp[0..2].copy_from_slice(&src.port().to_be_bytes());
            tcp[2..4].copy_from_slice(&dst.port().to_be_bytes());
            tcp[12] = 5 << 4;
            frame.extend(ip);
            frame.extend(tcp);
            frame.extend(vec![0xaa; usize::from(payload)]);
            frame.truncate(96);
            f.extend(sec.to_le_bytes());
            f.extend(ns.to_le_bytes());
            f.extend((frame.len() as u32).to_le_bytes());
            f.extend((frame.len() as u32).to_le_bytes());
            f.extend(frame);
        }
        f
    }

    #[test]
    fn a_pcap_file_gives_stamps_addresses_and_payload_lengths_even_when_cut_short() {
        let data = pcap(&[
            (7, 5, a(1, 80), a(2, 9000), 0),
            (8, 9, a(2, 9000), a(1, 80), 500),
        ]);
        let got = parse_pcap(&data).unwrap();
        assert_eq!(
            got,
            vec![
                Packet {
                    at_ns: 7_000_000_005,
                    src: a(1, 80),
                    dst: a(2, 9000),
                    payload: 0
                },
                Packet {
                    at_ns: 8_000_000_009,
                    src: a(2, 9000),
                    dst: a(1, 80),
                    payload: 500
                },
            ]
        );
        // A record cut off by the end of the file ends the list; it is not an error.
        assert_eq!(parse_pcap(&data[..data.len() - 10]).unwrap().len(), 1);
        assert!(parse_pcap(b"not a pcap file at all, no").is_err());
    }

    #[test]
    fn proc_net_tcp_lines_give_local_addresses_and_inodes() {
        let ip = u32::from_ne_bytes([127, 0, 0, 1]);
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             0: {ip:08X}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n"
        );
        assert_eq!(
            local_addrs(&table).collect::<Vec<_>>(),
            vec![(a(1, 8080), 4242)]
        );
    }

    #[test]
    fn propagation_runs_from_the_answer_to_the_ack_of_the_last_update() {
        let web = a(1, 80);
        let (n1, n2, n3) = (a(1, 7001), a(1, 7002), a(1, 7003));
        let owners = HashMap::from([(web, 0), (n1, 0), (n2, 1), (n3, 2)]);
        let c1 = Ipv4Addr::new(127, 9, 0, 1);
        let c2 = Ipv4Addr::new(127, 9, 0, 2);
        let p = |ms: f64, src, dst, payload| Packet {
            at_ns: (ms * 1e6) as u64,
            src,
            dst,
            payload,
        };
        let packets = vec![
            // Client 1: an update and its ack before the answer, a second update after it.
            p(0.0, SocketAddrV4::new(c1, 5000), web, 60),
            p(0.1, n1, n2, 87),
            p(0.2, n2, n1, 41),
            p(0.3, n1, n3, 87), // to node 3: not this figure's
            p(0.4, web, SocketAddrV4::new(c1, 5000), 144),
            p(0.5, n1, n2, 108),
            p(0.6, n3, n1, 41),
            p(0.9, n2, n1, 41),
            // Client 1 asks node 2: the window is over, node 2's own update is not an ack.
            p(1.0, SocketAddrV4::new(c1, 5001), a(1, 81), 0),
            p(1.1, n2, n1, 90),
            // Client 2: acknowledged before the answer.
            p(2.0, SocketAddrV4::new(c2, 5000), web, 60),
            p(2.1, n1, n2, 108),
            p(2.2, n2, n1, 41),
            p(2.5, web, SocketAddrV4::new(c2, 5000), 144),
            p(2.6, n1, n3, 41),
        ];
        let got = propagation(&packets, &owners, web, (0, 1), &[c1, c2]);
        assert_eq!(got.ms.len(), 2);
        assert!((got.ms[0] - 0.5).abs() < 1e-9, "{:?}", got.ms);
        assert_eq!(got.ms[1], 0.0);
        assert_eq!(got.before_answer(), 1);
        assert_eq!(got.answer_ms.len(), 2);
        assert!((got.answer_ms[0] - 0.4).abs() < 1e-9, "{:?}", got.answer_ms);
        // An update never acknowledged while the client waited gives no value.
        let cut: Vec<Packet> = packets
            .iter()
            .copied()
            .filter(|p| p.at_ns != 900_000)
            .collect();
        let got = propagation(&cut, &owners, web, (0, 1), &[c1, c2]);
        assert_eq!(got.ms, vec![0.0]);
    }
}
