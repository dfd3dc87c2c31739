//! Network partitions made of real Linux network namespaces: a service (a camera's RTSP server,
//! a broker) in its own namespace, reached from the test's namespace (where Vigil runs) through
//! a router namespace, with veth pairs between them:
//!
//! ```text
//!  Vigil (host ns) ── veth ── router ns ── veth ── service ns (RTSP server / mosquitto)
//!  10.N.K.1                 10.N.K.2 | 10.N.K+1.1           10.N.K+1.2
//! ```
//!
//! The router cuts the path in one of two ways, and restores it:
//! - [`Cut::Unreachable`]: the router's link to the service goes down, so the router answers
//!   "network unreachable" (ICMP): what a box sees when a switch port or a VPN goes away.
//! - [`Cut::Loss`]: 100 % packet loss in both directions, silently: `tc netem loss 100%` on both
//!   of the router's links where the kernel has netem, else blackhole routes for both ends in the
//!   router (silent discard, the same effect on the wire; [`Partition::loss_method`] says which).
//!
//! Needs root (CAP_NET_ADMIN) and `ip` from iproute2.

use std::process::Command;
use std::sync::OnceLock;

/// How a path is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    Unreachable,
    Loss,
}

/// One service behind a router; removed (namespaces and links) when dropped.
pub struct Partition {
    pub router: String,
    pub service: String,
    /// The service's address, as Vigil reaches it.
    pub service_ip: String,
    host_ip: String,
    router_to_service: String,
    router_to_host: String,
    netem: bool,
    cut: Option<Cut>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

fn tc(ns: &str, args: &[&str]) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "tc"])
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Why partitions cannot be made here (not root, no `ip`, no namespaces), or None.
pub fn unavailable() -> Option<String> {
    let probe = format!("vigil-probe-{}", std::process::id());
    match ip(&["netns", "add", &probe]) {
        Ok(()) => {
            let _ = ip(&["netns", "del", &probe]);
            None
        }
        Err(e) => Some(e),
    }
}

/// True when the test must be skipped: no namespaces here (said on stderr). Fails instead where
/// `VIGIL_REQUIRE_NETNS` is set (CI).
pub fn skip() -> bool {
    let Some(why) = unavailable() else {
        return false;
    };
    assert!(
        std::env::var_os("VIGIL_REQUIRE_NETNS").is_none(),
        "network namespaces are required here (VIGIL_REQUIRE_NETNS) but: {why}"
    );
    eprintln!("SKIPPED: cannot make network namespaces here ({why}); run as root");
    true
}

/// The N of this process's `10.N.0.0/16`, chosen once: the first of 100..=199 (starting from
/// the process id, so that parallel test processes differ) in which this machine has no route
/// and no address. CI machines may route parts of 10/8 themselves (a cluster's per-node /24s):
/// a partition that added the same /24 failed with "File exists".
fn subnet() -> u8 {
    static N: OnceLock<u8> = OnceLock::new();
    *N.get_or_init(|| {
        let show = |args: &[&str]| {
            Command::new("ip")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        let taken =
            show(&["-4", "route", "show", "table", "all"]) + &show(&["-4", "-o", "addr", "show"]);
        let start = std::process::id() % 100;
        (0..100)
            .map(|i| 100 + ((start + i) % 100) as u8)
            .find(|n| !in_use(&taken, *n))
            .expect("every 10.N.0.0/16 for N in 100..=199 is in use on this machine")
    })
}

/// Whether `ip route`/`ip addr` output names an address or prefix inside `10.n.0.0/16`.
fn in_use(ip_output: &str, n: u8) -> bool {
    let prefix = format!("10.{n}.");
    ip_output
        .split(|c: char| c.is_whitespace() || c == '/')
        .any(|word| word.starts_with(&prefix))
}

impl Partition {
    /// A new partition; `slot` (0..=9) keeps the addresses and names of partitions of one test
    /// process apart.
    pub fn new(tag: &str, slot: u8) -> Self {
        let pid = std::process::id();
        let n = subnet();
        let k = 2 * slot;
        let id = format!("{}{tag}", pid % 100_000);
        let router = format!("vigil-{id}-r");
        let service = format!("vigil-{id}-s");
        for ns in [&router, &service] {
            let _ = ip(&["netns", "del", ns]); // a leftover of a killed run
        }
        let (h, rh, rs, s) = (
            format!("vg{id}h"),
            format!("vg{id}rh"),
            format!("vg{id}rs"),
            format!("vg{id}s"),
        );
        let _ = ip(&["link", "del", &h]);
        let host_ip = format!("10.{n}.{k}.1");
        let router_host_ip = format!("10.{n}.{k}.2");
        let router_service_ip = format!("10.{n}.{}.1", k + 1);
        let service_ip = format!("10.{n}.{}.2", k + 1);
        must(&["netns", "add", &router]);
        must(&["netns", "add", &service]);
        must(&["link", "add", &h, "type", "veth", "peer", "name", &rh]);
        must(&["link", "set", &rh, "netns", &router]);
        must(&["link", "add", &s, "type", "veth", "peer", "name", &rs]);
        must(&["link", "set", &rs, "netns", &router]);
        must(&["link", "set", &s, "netns", &service]);
        must(&["addr", "add", &format!("{host_ip}/24"), "dev", &h]);
        must(&["link", "set", &h, "up"]);
        for (dev, addr) in [(&rh, &router_host_ip), (&rs, &router_service_ip)] {
            must(&[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ]);
            must(&["-n", &router, "link", "set", dev, "up"]);
        }
        must(&[
            "-n",
            &service,
            "addr",
            "add",
            &format!("{service_ip}/24"),
            "dev",
            &s,
        ]);
        must(&["-n", &service, "link", "set", &s, "up"]);
        must(&["-n", &service, "link", "set", "lo", "up"]);
        must(&[
            "-n",
            &service,
            "route",
            "add",
            "default",
            "via",
            &router_service_ip,
        ]);
        must(&[
            "route",
            "add",
            &format!("10.{n}.{}.0/24", k + 1),
            "via",
            &router_host_ip,
        ]);
        let fwd = Command::new("ip")
            .args(["netns", "exec", &router, "sh", "-c"])
            .arg("echo 1 > /proc/sys/net/ipv4/ip_forward")
            .status()
            .expect("sh");
        assert!(fwd.success(), "cannot turn on forwarding in {router}");
        // Does this kernel have netem? Try it on the router's link to the host, then take it off.
        let netem = tc(
            &router,
            &["qdisc", "add", "dev", &rh, "root", "netem", "loss", "0%"],
        ) && tc(&router, &["qdisc", "del", "dev", &rh, "root"]);
        Self {
            router,
            service,
            service_ip,
            host_ip,
            router_to_service: rs,
            router_to_host: rh,
            netem,
            cut: None,
        }
    }

    /// How [`Cut::Loss`] is made here.
    pub fn loss_method(&self) -> &'static str {
        if self.netem {
            "tc netem loss 100% on both router links"
        } else {
            "blackhole routes in the router (this kernel has no netem qdisc)"
        }
    }

    /// `program` run inside the service's namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.service, program]);
        c
    }

    /// A firewall between Vigil and the service that passes TCP and drops every UDP packet the
    /// service sends (policy routing in the router: UDP coming in from the service's side goes
    /// to a blackhole route), as many sites do with RTP.
    pub fn drop_udp_from_service(&self) {
        let r = self.router.as_str();
        must(&[
            "-n",
            r,
            "rule",
            "add",
            "pref",
            "10",
            "iif",
            &self.router_to_service,
            "ipproto",
            "udp",
            "lookup",
            "177",
        ]);
        must(&[
            "-n",
            r,
            "route",
            "add",
            "blackhole",
            "default",
            "table",
            "177",
        ]);
    }

    pub fn cut(&mut self, how: Cut) {
        assert!(self.cut.is_none(), "already cut");
        let r = self.router.as_str();
        match how {
            Cut::Unreachable => must(&["-n", r, "link", "set", &self.router_to_service, "down"]),
            Cut::Loss if self.netem => {
                for dev in [&self.router_to_host, &self.router_to_service] {
                    assert!(
                        tc(
                            r,
                            &["qdisc", "add", "dev", dev, "root", "netem", "loss", "100%"]
                        ),
                        "netem on {dev}"
                    );
                }
            }
            Cut::Loss => {
                for to in [&self.service_ip, &self.host_ip] {
                    must(&["-n", r, "route", "add", "blackhole", &format!("{to}/32")]);
                }
            }
        }
        self.cut = Some(how);
    }

    pub fn restore(&mut self) {
        let r = self.router.as_str();
        match self.cut.take().expect("not cut") {
            Cut::Unreachable => must(&["-n", r, "link", "set", &self.router_to_service, "up"]),
            Cut::Loss if self.netem => {
                for dev in [&self.router_to_host, &self.router_to_service] {
                    assert!(
                        tc(r, &["qdisc", "del", "dev", dev, "root"]),
                        "netem off {dev}"
                    );
                }
            }
            Cut::Loss => {
                for to in [&self.service_ip, &self.host_ip] {
                    must(&["-n", r, "route", "del", "blackhole", &format!("{to}/32")]);
                }
            }
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth ends, and with them their peers.
        let _ = ip(&["netns", "del", &self.service]);
        let _ = ip(&["netns", "del", &self.router]);
    }
}

#[test]
fn a_subnet_is_in_use_when_a_route_or_address_lies_in_it() {
    let routes = "default via 10.0.0.1 dev eth0\n10.131.1.0/24 via 10.130.0.7 dev eth0\n\
                  local 110.5.0.1 dev lo table local\n";
    assert!(in_use(routes, 131));
    assert!(in_use(routes, 130));
    assert!(!in_use(routes, 5)); // 110.5.… is not 10.5.…
    assert!(!in_use(routes, 13));
    assert!(in_use(
        "2: eth0    inet 10.140.3.4/16 brd 10.140.255.255",
        140
    ));
}
