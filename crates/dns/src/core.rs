//! The protocol core: query bytes in, reply bytes (or "forward this") out.
//! No sockets, no clock, no randomness.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicU64,
    Ordering::{Relaxed, SeqCst},
};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::zone::{Catalog, CompiledZone};
use crate::{Error, ZoneSet};

/// The EDNS payload size we advertise (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;
/// The largest UDP reply we send, whatever the client advertises.
pub const MAX_UDP_PAYLOAD: usize = 4096;
/// CNAME links followed within our zones before giving up (loops, long chains).
const MAX_CNAME_CHAIN: usize = 8;

/// How the query arrived: UDP replies are limited to the client's payload
/// size (512 without EDNS) and truncated (TC) beyond it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What the shell does with a query.
#[derive(Debug)]
pub enum Outcome {
    /// Send these bytes back to the client.
    Reply(Vec<u8>),
    /// The name is outside our zones: ask an upstream.
    Forward(Forward),
    /// Malformed (or not a query): send nothing.
    Drop,
}

/// A query to relay to an upstream server. The shell sends
/// [`Forward::query`] with an id of its choosing to each upstream in turn,
/// passes whatever comes back through [`Forward::relay`] and, if no
/// upstream gives a usable answer in time, replies [`Server::forward_failed`].
#[derive(Debug)]
pub struct Forward {
    original: Vec<u8>,
    question: Query,
    upstreams: Vec<SocketAddr>,
    transport: Transport,
    udp_limit: usize,
    servfail: Vec<u8>,
}

impl Forward {
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The client's query, byte for byte, under the id `id`.
    pub fn query(&self, id: u16) -> Vec<u8> {
        let mut q = self.original.clone();
        q[..2].copy_from_slice(&id.to_be_bytes());
        q
    }

    /// The upstream's reply to send to the client, or `None` when `reply`
    /// is not an answer to [`Forward::query`]`(id)` (wrong id, wrong
    /// question, not a response, malformed) and should be ignored.
    pub fn relay(&self, reply: &[u8], id: u16) -> Option<Vec<u8>> {
        if reply.len() < 12 || reply[..2] != id.to_be_bytes() {
            return None;
        }
        let msg = Message::from_vec(reply).ok()?;
        if msg.metadata.message_type != MessageType::Response {
            return None;
        }
        let q = msg.queries.first()?;
        if msg.queries.len() != 1
            || q.query_type() != self.question.query_type()
            || q.query_class() != self.question.query_class()
            || !q.name().eq_ignore_root(self.question.name())
        {
            return None;
        }
        let client_id = [self.original[0], self.original[1]];
        if self.transport == Transport::Udp && reply.len() > self.udp_limit {
            // The upstream ignored the client's payload size.
            let mut m = msg;
            m.metadata.id = u16::from_be_bytes(client_id);
            return Some(truncated(m));
        }
        let mut out = reply.to_vec();
        out[..2].copy_from_slice(&client_id);
        Some(out)
    }
}

/// Counts since start. `queries` = `answered` + `forwarded` +
/// `malformed_dropped`; `nxdomain` is part of `answered`, `forward_failed`
/// part of `forwarded`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub queries: u64,
    /// Replied to from our own data (answers, NXDOMAIN, NODATA, REFUSED,
    /// FORMERR, NOTIMP).
    pub answered: u64,
    pub nxdomain: u64,
    pub forwarded: u64,
    pub forward_failed: u64,
    pub malformed_dropped: u64,
    /// Of `answered`, those sent by an [`Offload`] (the XDP path) for the
    /// server.
    pub offloaded: u64,
    /// Queries an offload saw but left to the server (not yet known, or
    /// known from older zones); counted again in `queries` by the server.
    pub offload_missed: u64,
}

#[derive(Default)]
struct AtomicCounters {
    queries: AtomicU64,
    answered: AtomicU64,
    nxdomain: AtomicU64,
    forwarded: AtomicU64,
    forward_failed: AtomicU64,
    malformed_dropped: AtomicU64,
}

/// The DNS server's state and rules. Shared (`Arc`) between the UDP and TCP
/// tasks; [`Server::reload`] swaps the zones in for the next query.
pub struct Server {
    catalog: ArcSwap<Catalog>,
    counters: AtomicCounters,
    /// Bumped by every reload, after the new zones are in.
    generation: AtomicU64,
    offloads: Mutex<Vec<Weak<dyn Offload>>>,
}

/// Something answering on the server's behalf outside it (the shell's
/// XDP path), told of reloads and counted with the server.
pub trait Offload: Send + Sync {
    /// The zones of `generation` are in force: stop sending older answers.
    fn reloaded(&self, generation: u64);
    /// Its counts, added to [`Server::counters`].
    fn counters(&self) -> Counters;
}

impl Server {
    pub fn new(zones: &ZoneSet) -> Result<Self, Error> {
        Ok(Server {
            catalog: ArcSwap::from_pointee(Catalog::compile(zones)?),
            counters: AtomicCounters::default(),
            generation: AtomicU64::new(0),
            offloads: Mutex::new(Vec::new()),
        })
    }

    /// Which zones are in force: 0 at first, one more after each reload.
    /// Read before answering, it labels the answer (a reload in between
    /// makes the label old, never the answer newer than it).
    pub fn generation(&self) -> u64 {
        self.generation.load(SeqCst)
    }

    /// Tells `offload` of every reload from now on, and adds its counts
    /// to [`Server::counters`] while it lives.
    pub fn add_offload(&self, offload: Weak<dyn Offload>) {
        let mut offloads = self.offloads.lock().unwrap_or_else(|e| e.into_inner());
        offloads.retain(|o| o.strong_count() > 0);
        offloads.push(offload);
    }

    fn live_offloads(&self) -> Vec<Arc<dyn Offload>> {
        let offloads = self.offloads.lock().unwrap_or_else(|e| e.into_inner());
        offloads.iter().filter_map(Weak::upgrade).collect()
    }

    /// Validates `zones` and serves them from the next query on. An invalid
    /// set is refused and the current one kept.
    pub fn reload(&self, zones: &ZoneSet) -> Result<(), Error> {
        self.catalog.store(Arc::new(Catalog::compile(zones)?));
        let generation = self.generation.fetch_add(1, SeqCst) + 1;
        for o in self.live_offloads() {
            o.reloaded(generation);
        }
        Ok(())
    }

    /// The server's counts, with those of its offloads.
    pub fn counters(&self) -> Counters {
        let c = &self.counters;
        let mut total = Counters {
            queries: c.queries.load(Relaxed),
            answered: c.answered.load(Relaxed),
            nxdomain: c.nxdomain.load(Relaxed),
            forwarded: c.forwarded.load(Relaxed),
            forward_failed: c.forward_failed.load(Relaxed),
            malformed_dropped: c.malformed_dropped.load(Relaxed),
            offloaded: 0,
            offload_missed: 0,
        };
        for o in self.live_offloads() {
            let x = o.counters();
            total.queries += x.queries;
            total.answered += x.answered;
            total.nxdomain += x.nxdomain;
            total.forwarded += x.forwarded;
            total.forward_failed += x.forward_failed;
            total.malformed_dropped += x.malformed_dropped;
            total.offloaded += x.offloaded;
            total.offload_missed += x.offload_missed;
        }
        total
    }

    /// No upstream answered `forward`: counts it and returns the SERVFAIL
    /// to send the client.
    pub fn forward_failed(&self, forward: &Forward) -> Vec<u8> {
        self.counters.forward_failed.fetch_add(1, Relaxed);
        forward.servfail.clone()
    }

    /// Answers one query message.
    pub fn handle(&self, query: &[u8], transport: Transport) -> Outcome {
        let c = &self.counters;
        c.queries.fetch_add(1, Relaxed);
        let Some(req) = decode_query(query) else {
            c.malformed_dropped.fetch_add(1, Relaxed);
            return Outcome::Drop;
        };
        let limit = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => req.edns.as_ref().map_or(512, |e| {
                usize::from(e.max_payload()).clamp(512, MAX_UDP_PAYLOAD)
            }),
        };
        let catalog = self.catalog.load();
        match resolve(&catalog, &req) {
            Resolution::Reply(resp) => {
                c.answered.fetch_add(1, Relaxed);
                if resp.metadata.response_code == ResponseCode::NXDomain {
                    c.nxdomain.fetch_add(1, Relaxed);
                }
                Outcome::Reply(encode(resp, limit))
            }
            Resolution::Forward => {
                c.forwarded.fetch_add(1, Relaxed);
                let mut servfail = respond(&req, &catalog);
                servfail.metadata.response_code = ResponseCode::ServFail;
                Outcome::Forward(Forward {
                    original: query.to_vec(),
                    question: req.queries[0].clone(),
                    upstreams: catalog.upstreams.clone(),
                    transport,
                    udp_limit: limit,
                    servfail: encode(servfail, limit),
                })
            }
        }
    }
}

impl Server {
    /// [`Server::handle`] for a UDP query, remembering replies in `cache`.
    ///
    /// A reply is a function of the query's bytes after its id and of the
    /// zones in force, so a query seen before (any id) gets the stored reply
    /// under its own id, counted exactly as [`Server::handle`] counts it,
    /// without being decoded, resolved or encoded again. The cache is
    /// emptied when the zones are reloaded and when it is full; forwarded
    /// and dropped queries are never stored. One cache per shell thread, so
    /// no lock is shared.
    pub fn handle_udp_cached(&self, cache: &mut AnswerCache, query: &[u8]) -> Outcome {
        let mut reply = Vec::new();
        match self.handle_udp_into(cache, query, &mut reply) {
            Handled::Reply => Outcome::Reply(reply),
            Handled::Forward(f) => Outcome::Forward(f),
            Handled::Drop => Outcome::Drop,
        }
    }

    /// [`Server::handle_udp_cached`] writing the reply into `reply`
    /// (emptied first, its allocation reused), so a cached answer costs a
    /// hash lookup and a copy.
    pub fn handle_udp_into(
        &self,
        cache: &mut AnswerCache,
        query: &[u8],
        reply: &mut Vec<u8>,
    ) -> Handled {
        reply.clear();
        let catalog = self.catalog.load();
        if !cache
            .catalog
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &catalog))
        {
            cache.entries.clear();
            cache.catalog = Some(Arc::clone(&catalog));
        }
        drop(catalog);
        if query.len() >= 12 {
            if let Some(hit) = cache.entries.get(&query[2..]) {
                let c = &self.counters;
                c.queries.fetch_add(1, Relaxed);
                c.answered.fetch_add(1, Relaxed);
                if hit.nxdomain {
                    c.nxdomain.fetch_add(1, Relaxed);
                }
                reply.extend_from_slice(&hit.reply);
                reply[..2].copy_from_slice(&query[..2]);
                cache.hits += 1;
                return Handled::Reply;
            }
        }
        match self.handle(query, Transport::Udp) {
            Outcome::Reply(fresh) => {
                // Replies are at least a header; `handle` only answers queries of 12+ bytes.
                if fresh.len() >= 12 && query.len() >= 12 && cache.capacity > 0 {
                    if cache.entries.len() >= cache.capacity {
                        cache.entries.clear();
                    }
                    let nxdomain = fresh[3] & 0x0f == ResponseCode::NXDomain.low();
                    cache.entries.insert(
                        query[2..].into(),
                        CachedReply {
                            reply: fresh.clone().into(),
                            nxdomain,
                        },
                    );
                }
                *reply = fresh;
                Handled::Reply
            }
            Outcome::Forward(f) => Handled::Forward(f),
            Outcome::Drop => Handled::Drop,
        }
    }
}

/// What [`Server::handle_udp_into`] did with a query: [`Outcome`] with the
/// reply bytes left in the caller's buffer.
#[derive(Debug)]
pub enum Handled {
    /// The reply is in the buffer: send it.
    Reply,
    Forward(Forward),
    Drop,
}

/// Replies by query bytes (after the id), for [`Server::handle_udp_cached`].
pub struct AnswerCache {
    /// The zones the entries were answered from.
    catalog: Option<Arc<Catalog>>,
    entries: HashMap<Box<[u8]>, CachedReply>,
    capacity: usize,
    hits: u64,
}

struct CachedReply {
    reply: Box<[u8]>,
    nxdomain: bool,
}

impl AnswerCache {
    /// A cache of at most `capacity` replies (0 stores nothing).
    pub fn new(capacity: usize) -> Self {
        AnswerCache {
            catalog: None,
            entries: HashMap::new(),
            capacity,
            hits: 0,
        }
    }

    /// Queries answered from the cache so far.
    pub fn hits(&self) -> u64 {
        self.hits
    }
}

/// A well-formed query, or `None` for anything to drop: undecodable bytes,
/// responses (answering them invites reflection loops) and trailing junk.
fn decode_query(bytes: &[u8]) -> Option<Message> {
    if bytes.len() < 12 {
        return None;
    }
    let msg = Message::from_vec(bytes).ok()?;
    (msg.metadata.message_type == MessageType::Query).then_some(msg)
}

enum Resolution {
    Reply(Message),
    Forward,
}

/// The response skeleton: id, opcode, RD/CD echoed, the question, OPT if
/// the query had one.
fn respond(req: &Message, catalog: &Catalog) -> Message {
    let mut m = Message::response(req.metadata.id, req.metadata.op_code);
    m.metadata.recursion_desired = req.metadata.recursion_desired;
    m.metadata.checking_disabled = req.metadata.checking_disabled;
    m.metadata.recursion_available = !catalog.upstreams.is_empty();
    m.add_queries(req.queries.iter().cloned());
    if req.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        e.set_version(0);
        m.set_edns(e);
    }
    m
}

fn error(req: &Message, catalog: &Catalog, code: ResponseCode) -> Resolution {
    let mut m = respond(req, catalog);
    m.metadata.response_code = code;
    Resolution::Reply(m)
}

fn resolve(catalog: &Catalog, req: &Message) -> Resolution {
    if let Some(e) = &req.edns {
        if e.version() > 0 {
            return error(req, catalog, ResponseCode::BADVERS);
        }
    }
    if req.metadata.op_code != OpCode::Query {
        return error(req, catalog, ResponseCode::NotImp);
    }
    let [q] = req.queries.as_slice() else {
        return error(req, catalog, ResponseCode::FormErr);
    };
    let qtype = q.query_type();
    let qname = key(q.name());
    let Some(zone) = catalog.zone_of(&qname) else {
        return if catalog.upstreams.is_empty() {
            error(req, catalog, ResponseCode::Refused)
        } else {
            Resolution::Forward
        };
    };
    if q.query_class() != DNSClass::IN && q.query_class() != DNSClass::ANY {
        return error(req, catalog, ResponseCode::Refused);
    }
    match qtype {
        // No zone transfers; OPT is not a question.
        RecordType::AXFR | RecordType::IXFR | RecordType::OPT => {
            return error(req, catalog, ResponseCode::Refused)
        }
        _ => {}
    }

    let mut m = respond(req, catalog);
    m.metadata.authoritative = true;
    let mut zone: &CompiledZone = zone;
    let mut name = qname;
    // Direct answers carry the name as asked (its case, too).
    let mut owner = q.name().clone();
    let mut seen = HashSet::new();
    for _ in 0..MAX_CNAME_CHAIN {
        seen.insert(name.clone());
        let Some(node) = zone.nodes.get(&name) else {
            if !zone.empty_non_terminals.contains(&name) {
                m.metadata.response_code = ResponseCode::NXDomain;
            }
            m.add_authority(negative_soa(zone));
            return Resolution::Reply(m);
        };
        let cname = node.get(&u16::from(RecordType::CNAME));
        if let (Some([c]), false) = (cname.map(Vec::as_slice), qtype == RecordType::CNAME) {
            let RData::CNAME(target) = &c.data else {
                unreachable!("CNAME sets hold CNAMEs")
            };
            m.add_answer(with_owner(c, &owner));
            let target = key(&target.0);
            match catalog.zone_of(&target) {
                // Outside our zones the client's resolver follows it.
                None => return Resolution::Reply(m),
                Some(_) if seen.contains(&target) => return Resolution::Reply(m),
                Some(z) => {
                    zone = z;
                    owner = target.clone();
                    name = target;
                    continue;
                }
            }
        }
        let answers: Vec<&Record> = if qtype == RecordType::ANY {
            node.values().flatten().collect()
        } else {
            node.get(&u16::from(qtype)).into_iter().flatten().collect()
        };
        if answers.is_empty() {
            m.add_authority(negative_soa(zone));
            return Resolution::Reply(m);
        }
        for r in &answers {
            m.add_answer(with_owner(r, &owner));
        }
        add_glue(catalog, &mut m, &answers);
        return Resolution::Reply(m);
    }
    // Chain too long: what we have.
    Resolution::Reply(m)
}

/// Lowercase, absolute: the form the catalog's keys have.
fn key(name: &Name) -> Name {
    let mut n = name.to_lowercase();
    n.set_fqdn(true);
    n
}

fn with_owner(r: &Record, owner: &Name) -> Record {
    let mut r = r.clone();
    r.name = owner.clone();
    r
}

/// RFC 2308: the SOA in the authority section, its TTL the lesser of the
/// SOA's own and its minimum field.
fn negative_soa(zone: &CompiledZone) -> Record {
    let mut soa = zone.soa.clone();
    if let RData::SOA(s) = &soa.data {
        soa.ttl = soa.ttl.min(s.minimum);
    }
    soa
}

/// A/AAAA of NS, MX and SRV targets we serve, in the additional section.
fn add_glue(catalog: &Catalog, m: &mut Message, answers: &[&Record]) {
    for r in answers {
        let target = match &r.data {
            RData::NS(n) => &n.0,
            RData::MX(mx) => &mx.exchange,
            RData::SRV(srv) => &srv.target,
            _ => continue,
        };
        let target = key(target);
        let Some(node) = catalog.zone_of(&target).and_then(|z| z.nodes.get(&target)) else {
            continue;
        };
        for t in [RecordType::A, RecordType::AAAA] {
            for g in node.get(&u16::from(t)).into_iter().flatten() {
                if !m.additionals.contains(g) {
                    m.add_additional(g.clone());
                }
            }
        }
    }
}

/// Encodes `m` within `limit` bytes: drops the additional section first
/// (glue is optional), then sends only the question with TC set.
fn encode(mut m: Message, limit: usize) -> Vec<u8> {
    match m.to_vec() {
        Ok(b) if b.len() <= limit => return b,
        Ok(_) => {}
        Err(_) => return header_only(&m, ResponseCode::ServFail),
    }
    m.additionals.clear();
    match m.to_vec() {
        Ok(b) if b.len() <= limit => b,
        _ => truncated(m),
    }
}

fn truncated(mut m: Message) -> Vec<u8> {
    m.answers.clear();
    m.authorities.clear();
    m.additionals.clear();
    m.metadata.truncation = true;
    m.to_vec()
        .unwrap_or_else(|_| header_only(&m, ResponseCode::ServFail))
}

/// A bare header, for when even encoding fails (it should not).
fn header_only(m: &Message, code: ResponseCode) -> Vec<u8> {
    let mut h = Message::response(m.metadata.id, m.metadata.op_code);
    h.metadata.response_code = code;
    h.to_vec().unwrap_or_default()
}
