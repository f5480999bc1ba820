//! The late Java app's way to find its VM: `InetAddress.isReachable` on a
//! fixed address, in a loop, before it loads ttyd. Here: an ICMP echo from
//! the guest network's namespace (a raw socket: the harness runs as root),
//! retried until a reply from that address arrives or the time is up.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Type};

use crate::netns::GuestNet;

/// One echo's wait for its reply.
const PER_TRY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error("{addr} did not answer ICMP echo within {within:?}")]
    Unreachable { addr: Ipv4Addr, within: Duration },
    #[error("ICMP socket: {0}")]
    Io(#[from] io::Error),
}

/// The ICMP echo request with `id` and `seq` (checksum filled in).
fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8; // echo request
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..].copy_from_slice(b"avf-ping");
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether `packet` (an IPv4 datagram, as a raw socket delivers it) is the
/// echo reply to `id` from `from`.
fn is_reply(packet: &[u8], from: Ipv4Addr, id: u16) -> bool {
    let Some(&v) = packet.first() else {
        return false;
    };
    let ihl = usize::from(v & 0x0f) * 4;
    packet.len() >= ihl + 8
        && packet[12..16] == from.octets()
        && packet[ihl] == 0
        && packet[ihl + 4..ihl + 6] == id.to_be_bytes()
}

/// Pings `addr` from `net` until it answers (Ok: how long it took) or
/// `within` has passed.
pub async fn wait_reachable(
    net: &GuestNet,
    addr: Ipv4Addr,
    within: Duration,
) -> Result<Duration, ReachError> {
    let sock = net.socket(Domain::IPV4, Type::RAW, Protocol::ICMPV4)?;
    sock.set_read_timeout(Some(PER_TRY))?;
    let t0 = Instant::now();
    let id = std::process::id() as u16;
    let to = SockAddr::from(SocketAddr::from((addr, 0)));
    // Blocking I/O with a short timeout, off the async threads.
    tokio::task::spawn_blocking(move || {
        let mut seq = 0u16;
        while t0.elapsed() < within {
            seq = seq.wrapping_add(1);
            // No route yet (the guest's address is not up) is "not yet".
            if sock.send_to(&echo_request(id, seq), &to).is_ok() {
                let until = Instant::now() + PER_TRY;
                while Instant::now() < until {
                    let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
                    match sock.recv(&mut buf) {
                        Ok(n) => {
                            // SAFETY: recv initialised the first n bytes.
                            let got: Vec<u8> = buf[..n]
                                .iter()
                                .map(|b| unsafe { b.assume_init() })
                                .collect();
                            if is_reply(&got, addr, id) {
                                return Ok(t0.elapsed());
                            }
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) =>
                        {
                            break
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            } else {
                std::thread::sleep(PER_TRY);
            }
        }
        Err(ReachError::Unreachable { addr, within })
    })
    .await
    .map_err(|e| io::Error::other(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_to_zero_and_replies_are_matched() {
        let p = echo_request(0x1234, 7);
        assert_eq!(checksum(&p), 0);
        let from = Ipv4Addr::new(192, 168, 0, 2);
        let mut ip = vec![0x45u8; 1];
        ip.extend([0u8; 11]);
        ip.extend(from.octets());
        ip.extend([192, 168, 0, 1]);
        let mut reply = p;
        reply[0] = 0;
        ip.extend(reply);
        assert!(is_reply(&ip, from, 0x1234));
        assert!(!is_reply(&ip, from, 0x4321));
        assert!(!is_reply(&ip, Ipv4Addr::new(10, 0, 0, 1), 0x1234));
        assert!(!is_reply(&ip[..20], from, 0x1234));
    }

    /// Root only (raw sockets): loopback answers at once. (No negative
    /// case here: this machine's network answers pings for any address.)
    #[tokio::test]
    async fn loopback_is_reachable() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: raw ICMP sockets need root");
            return;
        }
        let net = GuestNet::Current;
        wait_reachable(&net, Ipv4Addr::LOCALHOST, Duration::from_secs(2))
            .await
            .unwrap();
    }
}
