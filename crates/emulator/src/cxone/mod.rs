//! The emulated NICE CXone: OIDC authentication ([`auth`]), the digital event hub ([`dfo`])
//! and Agent Assist Hub notifications ([`aah`]); this file holds their shared state.

pub(crate) mod aah;
pub(crate) mod auth;
pub(crate) mod dfo;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::CxoneConfig;
use crate::feed::{Feeds, Shape};
use crate::stats::{AahMessage, AahSocketStats, AahStats, DfoStats};
use crate::util::lock;

/// AAH sockets whose records are kept.
const AAH_SOCKETS_KEPT: usize = 1024;
/// Messages kept per AAH socket.
const AAH_MESSAGES_KEPT: usize = 10_000;

/// The CXone side of the emulator.
#[derive(Debug)]
pub(crate) struct Cxone {
    cfg: CxoneConfig,
    /// DFO streams (`tenantId/userId`) and their events.
    pub dfo_feeds: Arc<Feeds>,
    /// AAH contact ids and their events.
    pub aah_feeds: Arc<Feeds>,
    /// Successful DFO registers.
    pub dfo_registers: AtomicU64,
    /// Refused DFO registers.
    pub dfo_registers_refused: AtomicU64,
    /// `RATE_LIMIT_EXCEEDED` sent.
    pub dfo_rate_limit_exceeded: AtomicU64,
    /// DFO heartbeat actions received.
    pub dfo_pings: AtomicU64,
    /// DFO pongs sent.
    pub dfo_pongs: Arc<AtomicU64>,
    /// AAH HEARTBEATs received.
    pub aah_pings: AtomicU64,
    /// AAH HEARTBEAT_ACKs sent.
    pub aah_pongs: Arc<AtomicU64>,
    aah_sockets: Mutex<BTreeMap<u64, AahSocketStats>>,
}

impl Cxone {
    /// Nothing yet.
    pub fn new(cfg: &CxoneConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            dfo_feeds: Arc::new(Feeds::new(Shape::Dfo)),
            aah_feeds: Arc::new(Feeds::new(Shape::Aah {
                ids: cfg.aah_message_ids,
            })),
            dfo_registers: AtomicU64::new(0),
            dfo_registers_refused: AtomicU64::new(0),
            dfo_rate_limit_exceeded: AtomicU64::new(0),
            dfo_pings: AtomicU64::new(0),
            dfo_pongs: Arc::default(),
            aah_pings: AtomicU64::new(0),
            aah_pongs: Arc::default(),
            aah_sockets: Mutex::default(),
        }
    }

    /// The configuration.
    pub fn cfg(&self) -> &CxoneConfig {
        &self.cfg
    }

    /// AAH socket `id` opened or closed.
    pub fn aah_open(&self, id: u64, open: bool) {
        let mut sockets = lock(&self.aah_sockets);
        sockets.entry(id).or_default().open = open;
        while sockets.len() > AAH_SOCKETS_KEPT {
            sockets.pop_first();
        }
    }

    /// Record one inbound message of AAH socket `id`.
    pub fn aah_record(&self, id: u64, msg: AahMessage) {
        let mut sockets = lock(&self.aah_sockets);
        let s = sockets.entry(id).or_default();
        if s.messages.len() >= AAH_MESSAGES_KEPT {
            s.messages.remove(0);
            s.messages_dropped += 1;
        }
        s.messages.push(msg);
    }

    /// DFO counters, with the open sockets per stream.
    pub fn dfo_stats(&self, sockets: BTreeMap<String, usize>) -> DfoStats {
        DfoStats {
            streams: self.dfo_feeds.stats(),
            sockets,
            registers: self.dfo_registers.load(Ordering::Relaxed),
            registers_refused: self.dfo_registers_refused.load(Ordering::Relaxed),
            rate_limit_exceeded: self.dfo_rate_limit_exceeded.load(Ordering::Relaxed),
            pings: self.dfo_pings.load(Ordering::Relaxed),
            pongs: self.dfo_pongs.load(Ordering::Relaxed),
        }
    }

    /// AAH counters and records.
    pub fn aah_stats(&self) -> AahStats {
        AahStats {
            sockets: lock(&self.aah_sockets).clone(),
            topics: self.aah_feeds.stats(),
            pings: self.aah_pings.load(Ordering::Relaxed),
            pongs: self.aah_pongs.load(Ordering::Relaxed),
        }
    }
}
