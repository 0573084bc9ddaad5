//! The protocol core: packets, metadata and `now` in; actions out. No I/O,
//! no clock.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime};

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::Encodable;

use crate::lease::unix_ms;
use crate::{pxe, wire, Error, Lease, LeaseChange, MacAddr, ServerConfig, SubnetConfig};

/// How long an offered address is held for the client's REQUEST.
pub const OFFER_HOLD: Duration = Duration::from_secs(30);
/// How long a DECLINEd address (someone else answers ARP for it) is kept out
/// of the pool.
pub const DECLINE_HOLD: Duration = Duration::from_secs(600);

/// Where a packet came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecvMeta {
    /// The UDP source (0.0.0.0:68 for a client without an address, the relay
    /// for relayed packets).
    pub src: SocketAddrV4,
    /// The receiving interface's address; selects the subnet of directly
    /// attached clients.
    pub local_addr: Option<Ipv4Addr>,
}

/// How loud a [`Action::Log`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Per-packet noise (malformed, rate-limited).
    Debug,
    Info,
    Warn,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Append to the lease journal and make it durable before performing any
    /// later `Send`.
    Persist(LeaseChange),
    /// Send `payload` from port 67 to `to`; `broadcast` when `to` is
    /// 255.255.255.255.
    Send {
        to: SocketAddrV4,
        broadcast: bool,
        payload: Vec<u8>,
    },
    Log {
        level: LogLevel,
        message: String,
    },
}

/// Packet and outcome counts since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub received: u64,
    pub discovers: u64,
    pub requests: u64,
    pub offered: u64,
    pub acked: u64,
    pub naked: u64,
    pub released: u64,
    pub declined: u64,
    pub informed: u64,
    pub dropped_malformed: u64,
    pub dropped_rate_limited: u64,
    /// No configured subnet for the client's link.
    pub dropped_no_subnet: u64,
    /// No free address, or the pending-offer cap reached.
    pub dropped_pool_exhausted: u64,
    /// REQUESTs that chose another server's offer.
    pub dropped_other_server: u64,
    /// Valid but not for us (other message types, unknown leases).
    pub ignored: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Offered,
    Bound,
    /// A lease that ran out; kept so the client gets it back if nobody else
    /// took it.
    Expired,
    Declined,
}

#[derive(Debug, Clone)]
struct Slot {
    mac: MacAddr,
    state: SlotState,
    /// End of the offer hold, lease, or decline quarantine.
    until: SystemTime,
    hostname: Option<String>,
}

/// A token bucket driven by the caller's clock.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Option<SystemTime>,
}

impl Bucket {
    fn take(&mut self, limit: crate::RateLimit, now: SystemTime) -> bool {
        let elapsed = match self.last {
            // A clock stepping backwards refills nothing.
            Some(last) => now.duration_since(last).unwrap_or_default().as_secs_f64(),
            None => f64::INFINITY,
        };
        self.last = Some(now);
        self.tokens =
            (self.tokens + elapsed * f64::from(limit.per_second)).min(f64::from(limit.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The DHCP server's state: configuration, address table, flood bucket and
/// counters.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    slots: BTreeMap<Ipv4Addr, Slot>,
    /// The last address each MAC held, so a returning client gets it back.
    last_ip: HashMap<MacAddr, Ipv4Addr>,
    bucket: Bucket,
    counters: Counters,
}

impl Server {
    /// A server with `leases` restored from the journal (expired ones are
    /// kept as hints for returning clients). Leases that no longer fit the
    /// configuration are dropped.
    pub fn new(config: ServerConfig, leases: Vec<Lease>) -> Result<Self, Error> {
        config.validate()?;
        let mut server = Server {
            config,
            slots: BTreeMap::new(),
            last_ip: HashMap::new(),
            bucket: Bucket {
                tokens: 0.0,
                last: None,
            },
            counters: Counters::default(),
        };
        for l in leases {
            server.last_ip.insert(l.mac, l.ip);
            server.slots.insert(
                l.ip,
                Slot {
                    mac: l.mac,
                    state: SlotState::Bound,
                    until: l.expires(),
                    hostname: l.hostname,
                },
            );
        }
        server.drop_unfit();
        Ok(server)
    }

    /// Live reload. An invalid configuration is refused and the old one
    /// kept; leases that no longer fit (address left every range, or now a
    /// known host's address) are dropped and logged.
    pub fn reconfigure(&mut self, config: ServerConfig) -> Result<Vec<Action>, Error> {
        config.validate()?;
        self.config = config;
        Ok(self.drop_unfit())
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Every binding (live or expired), as the journal would hold it.
    pub fn leases(&self) -> Vec<Lease> {
        self.slots
            .iter()
            .filter(|(_, s)| matches!(s.state, SlotState::Bound | SlotState::Expired))
            .map(|(ip, s)| Lease {
                mac: s.mac,
                ip: *ip,
                expires_unix_ms: unix_ms(s.until),
                hostname: s.hostname.clone(),
            })
            .collect()
    }

    /// Ends lapsed offers, decline quarantines and leases as of `now`.
    pub fn expire(&mut self, now: SystemTime) -> Vec<Action> {
        let mut actions = Vec::new();
        self.slots.retain(|ip, s| {
            if s.until > now {
                return true;
            }
            match s.state {
                SlotState::Offered | SlotState::Declined => false,
                SlotState::Bound => {
                    s.state = SlotState::Expired;
                    actions.push(log(
                        LogLevel::Info,
                        format!("lease of {ip} to {} expired", s.mac),
                    ));
                    true
                }
                SlotState::Expired => true,
            }
        });
        actions
    }

    /// Handles one received packet.
    pub fn handle(&mut self, packet: &[u8], from: RecvMeta, now: SystemTime) -> Vec<Action> {
        self.counters.received += 1;
        let msg = match wire::decode(packet) {
            Ok(m) => m,
            Err(why) => {
                self.counters.dropped_malformed += 1;
                return vec![log(
                    LogLevel::Debug,
                    format!("dropped packet from {}: {why}", from.src),
                )];
            }
        };
        let mut mac = [0u8; 6];
        mac.copy_from_slice(msg.chaddr());
        let mac = MacAddr(mac);
        match msg.opts().msg_type() {
            Some(MessageType::Discover) => self.discover(&msg, mac, from, now),
            Some(MessageType::Request) => self.request(&msg, mac, from, now),
            Some(MessageType::Decline) => self.decline(&msg, mac, now),
            Some(MessageType::Release) => self.release(&msg, mac),
            Some(MessageType::Inform) => self.inform(&msg, mac, from),
            _ => {
                self.counters.ignored += 1;
                vec![]
            }
        }
    }

    fn subnet_for(&self, msg: &Message, from: RecvMeta) -> Option<usize> {
        let find = |ip: Ipv4Addr| self.config.subnets.iter().position(|s| s.contains(ip));
        if !msg.giaddr().is_unspecified() {
            return find(msg.giaddr());
        }
        if let Some(local) = from.local_addr {
            return find(local);
        }
        if !msg.ciaddr().is_unspecified() {
            return find(msg.ciaddr());
        }
        // No link information at all: unambiguous only with one subnet.
        (self.config.subnets.len() == 1).then_some(0)
    }

    /// Whether `mac` may hold `ip` in `subnet` as of `now`.
    fn may_hold(
        &self,
        subnet: &SubnetConfig,
        mac: MacAddr,
        ip: Ipv4Addr,
        now: SystemTime,
    ) -> Result<(), &'static str> {
        if let Some(h) = subnet.host_for_mac(mac) {
            return if h.ip == ip {
                Ok(())
            } else {
                Err("not the known host's reserved address")
            };
        }
        if !subnet.contains(ip) {
            return Err("wrong network");
        }
        if !subnet.in_dynamic_range(ip) || subnet.excluded(ip, self.config.server_id) {
            return Err("outside every dynamic range");
        }
        if !self.free_for(ip, mac, now) {
            return Err("leased to another client");
        }
        Ok(())
    }

    fn free_for(&self, ip: Ipv4Addr, mac: MacAddr, now: SystemTime) -> bool {
        match self.slots.get(&ip) {
            None => true,
            Some(s) if s.state == SlotState::Declined => s.until <= now,
            Some(s) if s.state == SlotState::Expired || s.until <= now => true,
            Some(s) => s.mac == mac,
        }
    }

    fn dynamic_ok(
        &self,
        subnet: &SubnetConfig,
        mac: MacAddr,
        ip: Ipv4Addr,
        now: SystemTime,
    ) -> bool {
        subnet.contains(ip)
            && subnet.in_dynamic_range(ip)
            && !subnet.excluded(ip, self.config.server_id)
            && self.free_for(ip, mac, now)
    }

    /// The client's live offer or lease in `subnet`, if any.
    fn current(&self, subnet: &SubnetConfig, mac: MacAddr, now: SystemTime) -> Option<Ipv4Addr> {
        self.slots
            .iter()
            .find(|(ip, s)| {
                s.mac == mac
                    && s.until > now
                    && matches!(s.state, SlotState::Offered | SlotState::Bound)
                    && subnet.contains(**ip)
            })
            .map(|(ip, _)| *ip)
    }

    /// Address for a dynamic client: its current one, its last one, the one
    /// it asks for, a never-used one, then the longest-expired one.
    fn choose(
        &self,
        subnet: &SubnetConfig,
        mac: MacAddr,
        requested: Option<Ipv4Addr>,
        now: SystemTime,
    ) -> Option<Ipv4Addr> {
        if let Some(ip) = self.current(subnet, mac, now) {
            if self.dynamic_ok(subnet, mac, ip, now) {
                return Some(ip);
            }
        }
        for ip in self.last_ip.get(&mac).copied().into_iter().chain(requested) {
            if self.dynamic_ok(subnet, mac, ip, now) {
                return Some(ip);
            }
        }
        let candidates = || {
            subnet
                .dynamic_ranges
                .iter()
                .flat_map(|r| (u32::from(*r.start())..=u32::from(*r.end())).map(Ipv4Addr::from))
        };
        // Never-used first: addresses others held stay theirs to come back to.
        let hinted: std::collections::HashSet<Ipv4Addr> = self.last_ip.values().copied().collect();
        if let Some(ip) = candidates().find(|ip| {
            !self.slots.contains_key(ip)
                && !hinted.contains(ip)
                && !subnet.excluded(*ip, self.config.server_id)
        }) {
            return Some(ip);
        }
        candidates()
            .filter(|ip| self.dynamic_ok(subnet, mac, *ip, now))
            .min_by_key(|ip| (hinted.contains(ip), self.slots.get(ip).map(|s| s.until)))
    }

    fn pending_offers(&self, subnet: &SubnetConfig, now: SystemTime) -> u64 {
        self.slots
            .iter()
            .filter(|(ip, s)| {
                s.state == SlotState::Offered && s.until > now && subnet.contains(**ip)
            })
            .count() as u64
    }

    fn discover(
        &mut self,
        msg: &Message,
        mac: MacAddr,
        from: RecvMeta,
        now: SystemTime,
    ) -> Vec<Action> {
        self.counters.discovers += 1;
        let Some(si) = self.subnet_for(msg, from) else {
            self.counters.dropped_no_subnet += 1;
            return vec![log(
                LogLevel::Debug,
                format!("discover from {mac}: no subnet for this link"),
            )];
        };
        let subnet = &self.config.subnets[si];
        let host = subnet.host_for_mac(mac).cloned();
        let current = self.current(subnet, mac, now);
        let requested = match msg.opts().get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let ip = match &host {
            Some(h) => h.ip,
            None => {
                let known_lessee = current.is_some();
                if !known_lessee && !self.bucket.take(self.config.unknown_client_rate, now) {
                    self.counters.dropped_rate_limited += 1;
                    return vec![log(
                        LogLevel::Debug,
                        format!("discover from {mac}: rate limited"),
                    )];
                }
                let Some(ip) = self.choose(subnet, mac, requested, now) else {
                    self.counters.dropped_pool_exhausted += 1;
                    return vec![log(
                        LogLevel::Warn,
                        format!(
                            "discover from {mac}: subnet {}/{} has no free address",
                            subnet.network, subnet.prefix_len
                        ),
                    )];
                };
                let cap =
                    subnet.pool_size() * u64::from(self.config.max_pending_offer_percent) / 100;
                if !known_lessee && self.pending_offers(subnet, now) >= cap.max(1) {
                    self.counters.dropped_pool_exhausted += 1;
                    return vec![log(
                        LogLevel::Warn,
                        format!(
                            "discover from {mac}: pending offers hold {}% of subnet {}/{}",
                            self.config.max_pending_offer_percent,
                            subnet.network,
                            subnet.prefix_len
                        ),
                    )];
                }
                ip
            }
        };
        let lease_secs = subnet.lease_secs;
        let hostname = host.and_then(|h| h.hostname);
        // Keep a live lease as it is; otherwise hold the address briefly.
        let bound_here = self
            .slots
            .get(&ip)
            .is_some_and(|s| s.mac == mac && s.state == SlotState::Bound && s.until > now);
        if !bound_here {
            self.slots.insert(
                ip,
                Slot {
                    mac,
                    state: SlotState::Offered,
                    until: now + OFFER_HOLD,
                    hostname: hostname.clone(),
                },
            );
        }
        self.counters.offered += 1;
        let reply = self.reply(
            msg,
            MessageType::Offer,
            ip,
            si,
            Some(lease_secs),
            hostname.as_deref(),
        );
        let mut out = vec![log(LogLevel::Info, format!("offer {ip} to {mac}"))];
        out.extend(self.send(msg, reply, false));
        out
    }

    fn request(
        &mut self,
        msg: &Message,
        mac: MacAddr,
        from: RecvMeta,
        now: SystemTime,
    ) -> Vec<Action> {
        self.counters.requests += 1;
        let opts = msg.opts();
        if let Some(DhcpOption::ServerIdentifier(sid)) = opts.get(OptionCode::ServerIdentifier) {
            if *sid != self.config.server_id {
                // The client took another server's offer: release ours.
                self.slots
                    .retain(|_, s| !(s.mac == mac && s.state == SlotState::Offered));
                self.counters.dropped_other_server += 1;
                return vec![log(
                    LogLevel::Debug,
                    format!("request from {mac} for server {sid}: not us"),
                )];
            }
        }
        let ip = match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
            _ if !msg.ciaddr().is_unspecified() => msg.ciaddr(),
            _ => {
                self.counters.dropped_malformed += 1;
                return vec![log(
                    LogLevel::Debug,
                    format!("request from {mac}: no address requested"),
                )];
            }
        };
        let Some(si) = self.subnet_for(msg, from) else {
            self.counters.dropped_no_subnet += 1;
            return vec![log(
                LogLevel::Debug,
                format!("request from {mac}: no subnet for this link"),
            )];
        };
        let subnet = &self.config.subnets[si];
        if let Err(why) = self.may_hold(subnet, mac, ip, now) {
            self.counters.naked += 1;
            let reply = self.nak(msg, why);
            let mut out = vec![log(LogLevel::Info, format!("nak {ip} to {mac}: {why}"))];
            out.extend(self.send(msg, reply, true));
            return out;
        }
        let lease_secs = subnet.lease_secs;
        let hostname = subnet.host_for_mac(mac).and_then(|h| h.hostname.clone());
        let until = now + Duration::from_secs(u64::from(lease_secs));
        // One address per client per subnet: moving frees the old one.
        let subnet = subnet.clone();
        self.slots.retain(|other, s| {
            !(s.mac == mac
                && *other != ip
                && subnet.contains(*other)
                && s.state != SlotState::Declined)
        });
        self.slots.insert(
            ip,
            Slot {
                mac,
                state: SlotState::Bound,
                until,
                hostname: hostname.clone(),
            },
        );
        self.last_ip.insert(mac, ip);
        self.counters.acked += 1;
        let lease = Lease {
            mac,
            ip,
            expires_unix_ms: unix_ms(until),
            hostname: hostname.clone(),
        };
        let reply = self.reply(
            msg,
            MessageType::Ack,
            ip,
            si,
            Some(lease_secs),
            hostname.as_deref(),
        );
        let mut out = vec![
            Action::Persist(LeaseChange::Bind(lease)),
            log(
                LogLevel::Info,
                format!("ack {ip} to {mac} for {lease_secs}s"),
            ),
        ];
        out.extend(self.send(msg, reply, false));
        out
    }

    fn decline(&mut self, msg: &Message, mac: MacAddr, now: SystemTime) -> Vec<Action> {
        let Some(DhcpOption::RequestedIpAddress(ip)) =
            msg.opts().get(OptionCode::RequestedIpAddress)
        else {
            self.counters.dropped_malformed += 1;
            return vec![log(
                LogLevel::Debug,
                format!("decline from {mac}: no address"),
            )];
        };
        let ip = *ip;
        match self.slots.get_mut(&ip) {
            Some(s) if s.mac == mac && s.state != SlotState::Declined => {
                s.state = SlotState::Declined;
                s.until = now + DECLINE_HOLD;
                if self.last_ip.get(&mac) == Some(&ip) {
                    self.last_ip.remove(&mac);
                }
                self.counters.declined += 1;
                vec![
                    Action::Persist(LeaseChange::Free { mac, ip }),
                    log(
                        LogLevel::Warn,
                        format!("{mac} declined {ip}: address in use on the network, quarantined"),
                    ),
                ]
            }
            _ => {
                self.counters.ignored += 1;
                vec![log(
                    LogLevel::Debug,
                    format!("decline of {ip} from {mac}: not its address"),
                )]
            }
        }
    }

    fn release(&mut self, msg: &Message, mac: MacAddr) -> Vec<Action> {
        let ip = msg.ciaddr();
        match self.slots.get(&ip) {
            Some(s) if s.mac == mac && s.state != SlotState::Declined => {
                self.slots.remove(&ip);
                self.counters.released += 1;
                vec![
                    Action::Persist(LeaseChange::Free { mac, ip }),
                    log(LogLevel::Info, format!("{mac} released {ip}")),
                ]
            }
            _ => {
                self.counters.ignored += 1;
                vec![log(
                    LogLevel::Debug,
                    format!("release of {ip} from {mac}: not its address"),
                )]
            }
        }
    }

    fn inform(&mut self, msg: &Message, mac: MacAddr, from: RecvMeta) -> Vec<Action> {
        let Some(si) = self.subnet_for(msg, from) else {
            self.counters.dropped_no_subnet += 1;
            return vec![log(
                LogLevel::Debug,
                format!("inform from {mac}: no subnet for this link"),
            )];
        };
        self.counters.informed += 1;
        let reply = self.reply(msg, MessageType::Ack, Ipv4Addr::UNSPECIFIED, si, None, None);
        self.send(msg, reply, false)
    }

    /// An OFFER or ACK: the subnet's options, the lease times, boot fields.
    fn reply(
        &self,
        req: &Message,
        kind: MessageType,
        yiaddr: Ipv4Addr,
        si: usize,
        lease_secs: Option<u32>,
        hostname: Option<&str>,
    ) -> Message {
        let subnet = &self.config.subnets[si];
        let mut m = self.base_reply(req, kind);
        m.set_yiaddr(yiaddr);
        if kind != MessageType::Offer {
            m.set_ciaddr(req.ciaddr());
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::SubnetMask(subnet.mask()));
        if let Some(gw) = subnet.gateway {
            o.insert(DhcpOption::Router(vec![gw]));
        }
        if !subnet.dns_servers.is_empty() {
            o.insert(DhcpOption::DomainNameServer(subnet.dns_servers.clone()));
        }
        if let Some(d) = &subnet.domain {
            o.insert(DhcpOption::DomainName(d.clone()));
        }
        o.insert(DhcpOption::BroadcastAddr(subnet.broadcast()));
        if let Some(secs) = lease_secs {
            o.insert(DhcpOption::AddressLeaseTime(secs));
            o.insert(DhcpOption::Renewal(secs / 2));
            o.insert(DhcpOption::Rebinding(secs / 8 * 7));
        }
        if let Some(h) = hostname {
            o.insert(DhcpOption::Hostname(h.to_string()));
        }
        if let Some(boot) = &self.config.boot {
            if let Some(choice) = pxe::choose(boot, req.opts()) {
                m.set_siaddr(boot.next_server);
                m.set_fname_str(&choice.file);
                let o = m.opts_mut();
                o.insert(DhcpOption::TFTPServerName(
                    boot.next_server.to_string().into_bytes(),
                ));
                o.insert(DhcpOption::BootfileName(choice.file.into_bytes()));
                if choice.echo_pxe_class {
                    o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
                }
            }
        }
        m
    }

    fn nak(&self, req: &Message, why: &str) -> Message {
        let mut m = self.base_reply(req, MessageType::Nak);
        m.opts_mut().insert(DhcpOption::Message(why.to_string()));
        m
    }

    fn base_reply(&self, req: &Message, kind: MessageType) -> Message {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootReply)
            .set_htype(req.htype())
            .set_chaddr(req.chaddr())
            .set_xid(req.xid())
            .set_flags(req.flags())
            .set_giaddr(req.giaddr())
            .set_yiaddr(Ipv4Addr::UNSPECIFIED)
            .set_siaddr(Ipv4Addr::UNSPECIFIED)
            .set_ciaddr(Ipv4Addr::UNSPECIFIED);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(self.config.server_id));
        m
    }

    /// RFC 2131 4.1: relayed → the relay's port 67; NAK → broadcast; a
    /// client with an address → unicast to it; otherwise broadcast (a UDP
    /// socket cannot unicast to an address the client does not have yet).
    fn send(&self, req: &Message, reply: Message, nak: bool) -> Vec<Action> {
        let (to, broadcast) = if !req.giaddr().is_unspecified() {
            (SocketAddrV4::new(req.giaddr(), 67), false)
        } else if nak || req.ciaddr().is_unspecified() || req.flags().broadcast() {
            (SocketAddrV4::new(Ipv4Addr::BROADCAST, 68), true)
        } else {
            (SocketAddrV4::new(req.ciaddr(), 68), false)
        };
        match reply.to_vec() {
            Ok(payload) => vec![Action::Send {
                to,
                broadcast,
                payload,
            }],
            Err(e) => vec![log(
                LogLevel::Warn,
                format!("reply to {}: encoding failed: {e}", to),
            )],
        }
    }

    fn drop_unfit(&mut self) -> Vec<Action> {
        let config = &self.config;
        let mut actions = Vec::new();
        self.slots.retain(|ip, s| {
            let fits = config.subnets.iter().any(|sub| {
                sub.contains(*ip)
                    && match sub.host_for_mac(s.mac) {
                        Some(h) => h.ip == *ip,
                        None => sub.in_dynamic_range(*ip) && !sub.excluded(*ip, config.server_id),
                    }
            });
            if !fits {
                actions.push(log(
                    LogLevel::Warn,
                    format!(
                        "dropped lease of {ip} to {}: no longer fits the configuration",
                        s.mac
                    ),
                ));
            }
            fits
        });
        actions
    }
}

fn log(level: LogLevel, message: String) -> Action {
    Action::Log { level, message }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
