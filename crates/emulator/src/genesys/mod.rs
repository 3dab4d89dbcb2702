//! The emulated Genesys Cloud Notifications API: channels bound to their token, their topics
//! and limits (this file), the REST routes ([`rest`]) and the channel socket ([`socket`]).

pub(crate) mod rest;
pub(crate) mod socket;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::Rng as _;
use tokio::time::Instant;

use crate::config::GenesysConfig;
use crate::feed::{Feeds, Inbox, Outlet, Shape};
use crate::state::{Ctl, Order, Shared};
use crate::stats::{ChannelStats, GenesysClientStats, GenesysStats};
use crate::tokens::{Held, Platform};
use crate::util::{deadline_after, epoch_ms, iso8601_ms, lock};

/// Longest topic name the platform takes.
const MAX_TOPIC_LEN: usize = 200;

/// Reasons a channel stops (also the close reason of its socket).
pub(crate) const EXPIRED: &str = "channel expired";
/// The channel's token expired or was revoked.
pub(crate) const TOKEN_EXPIRED: &str = "token expired";
/// A newer channel of the same client took its place.
pub(crate) const REPLACED: &str = "channel replaced";
/// Another socket connected to the channel.
pub(crate) const ELSEWHERE: &str = "connected elsewhere";

/// The Genesys side of the emulator.
#[derive(Debug)]
pub(crate) struct Genesys {
    cfg: GenesysConfig,
    /// Topics and their events.
    pub feeds: Arc<Feeds>,
    channels: Mutex<Channels>,
    /// Server heartbeats sent.
    pub heartbeats: AtomicU64,
    /// App-level pings received.
    pub pings: AtomicU64,
    /// Pongs sent.
    pub pongs: Arc<AtomicU64>,
    /// `socket_closing` messages sent.
    pub socket_closing: AtomicU64,
}

/// Every channel ever created, and per-client counters.
#[derive(Debug, Default)]
struct Channels {
    by_id: HashMap<String, Channel>,
    next_serial: u64,
    created: HashMap<String, u64>,
    replaced: HashMap<String, u64>,
}

/// One channel.
#[derive(Debug)]
struct Channel {
    serial: u64,
    client: String,
    /// The token that created it: the channel lives only as long as it does.
    token: Held,
    token_serial: u64,
    expires: Instant,
    expires_ms: u64,
    topics: BTreeSet<String>,
    stopped: Option<&'static str>,
    /// The connected socket's id.
    socket: Option<u64>,
    outlet: Arc<Outlet>,
    connections: u64,
    subscriptions: u64,
    connected_at_ms: Option<u64>,
    disconnected_at_ms: Option<u64>,
}

/// What `POST /channels` and `GET /channels` show of a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChannelView {
    /// `streaming-0-...`.
    pub id: String,
    /// Where its socket is.
    pub connect_uri: String,
    /// ISO 8601.
    pub expires: String,
}

/// How a subscribing call changes a channel's topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubMode {
    /// PUT: exactly these.
    Replace,
    /// POST, socket subscribe: these too.
    Add,
    /// Socket unsubscribe: not these.
    Remove,
    /// DELETE: none.
    Clear,
}

/// Why a channel call fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ChannelError {
    /// Unknown, stopped, or another client's.
    NotFound,
    /// The call would leave more topics than a channel takes.
    TooManyTopics {
        /// How many it would have.
        would_have: usize,
        /// The limit.
        max: usize,
    },
    /// A topic name the platform refuses.
    BadTopic(String),
}

/// What a socket gets when it takes a channel.
#[derive(Debug)]
pub(crate) struct Connected {
    /// Its events.
    pub events: Inbox,
    /// When the channel stops unless extended: its expiry or its token's, whichever is first.
    pub stop_at: Instant,
}

impl Genesys {
    /// No channels yet; the configured topics exist (and produce) from the start.
    pub fn new(cfg: &GenesysConfig) -> Self {
        let feeds = Arc::new(Feeds::new(Shape::Genesys));
        for t in &cfg.topics {
            feeds.topic(t);
        }
        Self {
            cfg: cfg.clone(),
            feeds,
            channels: Mutex::default(),
            heartbeats: AtomicU64::new(0),
            pings: AtomicU64::new(0),
            pongs: Arc::default(),
            socket_closing: AtomicU64::new(0),
        }
    }

    /// The configuration.
    pub fn cfg(&self) -> &GenesysConfig {
        &self.cfg
    }

    /// A new channel for `client`, bound to `token`; a client's channel past the limit
    /// replaces its oldest one without a socket (else its oldest).
    pub fn create(
        &self,
        shared: &Shared,
        client: &str,
        token: &str,
        token_serial: u64,
    ) -> ChannelView {
        let now = Instant::now();
        let mut chans = lock(&self.channels);
        self.sweep_locked(shared, &mut chans);
        let mut live: Vec<(&String, &Channel)> = chans
            .by_id
            .iter()
            .filter(|(_, c)| c.client == client && c.stopped.is_none())
            .collect();
        if live.len() >= self.cfg.max_channels.max(1) {
            live.sort_by_key(|(_, c)| (c.socket.is_some(), c.serial));
            if let Some((victim, _)) = live.first() {
                let victim = (*victim).clone();
                stop(shared, &self.feeds, &mut chans, &victim, REPLACED);
                *chans.replaced.entry(client.to_string()).or_default() += 1;
            }
        }
        chans.next_serial += 1;
        let serial = chans.next_serial;
        let id = channel_id();
        let expires = deadline_after(now, self.cfg.channel_ttl);
        let expires_ms = epoch_ms().saturating_add(ms(self.cfg.channel_ttl));
        chans.by_id.insert(
            id.clone(),
            Channel {
                serial,
                client: client.to_string(),
                token: Held(token.to_string()),
                token_serial,
                expires,
                expires_ms,
                topics: BTreeSet::new(),
                stopped: None,
                socket: None,
                outlet: Arc::default(),
                connections: 0,
                subscriptions: 0,
                connected_at_ms: None,
                disconnected_at_ms: None,
            },
        );
        *chans.created.entry(client.to_string()).or_default() += 1;
        view(shared, &id, expires_ms)
    }

    /// The live channels of `client`, oldest first.
    pub fn list(&self, shared: &Shared, client: &str) -> Vec<ChannelView> {
        let mut chans = lock(&self.channels);
        self.sweep_locked(shared, &mut chans);
        let mut live: Vec<(u64, ChannelView)> = chans
            .by_id
            .iter()
            .filter(|(_, c)| c.client == client && c.stopped.is_none())
            .map(|(id, c)| (c.serial, view(shared, id, c.expires_ms)))
            .collect();
        live.sort_by_key(|(s, _)| *s);
        live.into_iter().map(|(_, v)| v).collect()
    }

    /// Whether channel `id` is live (any client).
    pub fn exists(&self, shared: &Shared, id: &str) -> bool {
        let mut chans = lock(&self.channels);
        live(shared, &self.feeds, &mut chans, id).is_some()
    }

    /// The topics of channel `id` of `client`.
    pub fn topics(
        &self,
        shared: &Shared,
        id: &str,
        client: &str,
    ) -> Result<Vec<String>, ChannelError> {
        let mut chans = lock(&self.channels);
        live(shared, &self.feeds, &mut chans, id).ok_or(ChannelError::NotFound)?;
        let ch = chans.by_id.get(id).ok_or(ChannelError::NotFound)?;
        if ch.client != client {
            return Err(ChannelError::NotFound);
        }
        Ok(ch.topics.iter().cloned().collect())
    }

    /// Change the topics of channel `id` (of `client`, when given: REST calls say whose
    /// they are; the socket is the channel's own). Subscribing modes extend its life.
    pub fn subscribe(
        &self,
        shared: &Shared,
        id: &str,
        client: Option<&str>,
        topics: &[String],
        mode: SubMode,
    ) -> Result<Vec<String>, ChannelError> {
        if matches!(mode, SubMode::Replace | SubMode::Add)
            && let Some(bad) = topics.iter().find(|t| !valid_topic(t))
        {
            return Err(ChannelError::BadTopic(bad.clone()));
        }
        let mut chans = lock(&self.channels);
        live(shared, &self.feeds, &mut chans, id).ok_or(ChannelError::NotFound)?;
        let ch = chans.by_id.get_mut(id).ok_or(ChannelError::NotFound)?;
        if client.is_some_and(|c| c != ch.client) {
            return Err(ChannelError::NotFound);
        }
        let mut next = match mode {
            SubMode::Replace | SubMode::Clear => BTreeSet::new(),
            SubMode::Add | SubMode::Remove => ch.topics.clone(),
        };
        match mode {
            SubMode::Replace | SubMode::Add => next.extend(topics.iter().cloned()),
            SubMode::Remove => {
                for t in topics {
                    next.remove(t);
                }
            }
            SubMode::Clear => {}
        }
        if next.len() > self.cfg.max_topics {
            return Err(ChannelError::TooManyTopics {
                would_have: next.len(),
                max: self.cfg.max_topics,
            });
        }
        for gone in ch.topics.difference(&next) {
            if let Some(t) = self.feeds.get(gone) {
                t.remove(ch.serial);
            }
        }
        for new in next.difference(&ch.topics) {
            self.feeds.topic(new).add(ch.serial, ch.outlet.clone());
        }
        ch.topics = next;
        if matches!(mode, SubMode::Replace | SubMode::Add) {
            ch.subscriptions += 1;
            ch.expires = deadline_after(Instant::now(), self.cfg.channel_ttl);
            ch.expires_ms = epoch_ms().saturating_add(ms(self.cfg.channel_ttl));
        }
        Ok(ch.topics.iter().cloned().collect())
    }

    /// The client of live channel `id`.
    pub fn client_of(&self, shared: &Shared, id: &str) -> Option<String> {
        let mut chans = lock(&self.channels);
        live(shared, &self.feeds, &mut chans, id)?;
        chans.by_id.get(id).map(|c| c.client.clone())
    }

    /// Socket `socket` takes channel `id`; the socket that had it is told to go.
    pub fn connect(
        &self,
        shared: &Shared,
        id: &str,
        socket: u64,
    ) -> Result<Connected, ChannelError> {
        let mut chans = lock(&self.channels);
        let stop_at = live(shared, &self.feeds, &mut chans, id).ok_or(ChannelError::NotFound)?;
        let ch = chans.by_id.get_mut(id).ok_or(ChannelError::NotFound)?;
        if let Some(old) = ch.socket.replace(socket) {
            shared.order(old, Ctl::Order(Order::Stop(ELSEWHERE)));
        }
        ch.connections += 1;
        ch.connected_at_ms = Some(epoch_ms());
        Ok(Connected {
            events: ch.outlet.attach(),
            stop_at,
        })
    }

    /// Socket `socket` is gone from channel `id` (if it still had it).
    pub fn disconnect(&self, id: &str, socket: u64) {
        let mut chans = lock(&self.channels);
        if let Some(ch) = chans.by_id.get_mut(id) {
            ch.disconnected_at_ms = Some(epoch_ms());
            if ch.socket == Some(socket) {
                ch.socket = None;
                ch.outlet.detach();
            }
        }
    }

    /// When channel `id` stops unless extended; `None` (and stopped) when it is not live.
    pub fn stop_at(&self, shared: &Shared, id: &str) -> Option<Instant> {
        let mut chans = lock(&self.channels);
        live(shared, &self.feeds, &mut chans, id)
    }

    /// Stop the selected live channels now (fault); their ids.
    pub fn expire(
        &self,
        shared: &Shared,
        channel: Option<&str>,
        client: Option<&str>,
    ) -> Vec<String> {
        let mut chans = lock(&self.channels);
        let ids: Vec<String> = chans
            .by_id
            .iter()
            .filter(|(id, c)| {
                c.stopped.is_none()
                    && channel.is_none_or(|x| x == id.as_str())
                    && client.is_none_or(|x| x == c.client)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            stop(shared, &self.feeds, &mut chans, id, EXPIRED);
        }
        ids
    }

    /// Stop every channel that is no longer live.
    pub fn sweep(&self, shared: &Shared) {
        let mut chans = lock(&self.channels);
        self.sweep_locked(shared, &mut chans);
    }

    fn sweep_locked(&self, shared: &Shared, chans: &mut Channels) {
        let ids: Vec<String> = chans
            .by_id
            .iter()
            .filter(|(_, c)| c.stopped.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            live(shared, &self.feeds, chans, &id);
        }
    }

    /// Counters.
    pub fn stats(&self, shared: &Shared) -> GenesysStats {
        let mut chans = lock(&self.channels);
        self.sweep_locked(shared, &mut chans);
        let mut clients: BTreeMap<String, GenesysClientStats> = BTreeMap::new();
        let mut channels = BTreeMap::new();
        for (id, c) in &chans.by_id {
            let cs = clients.entry(c.client.clone()).or_default();
            if c.stopped.is_none() {
                cs.channels_live += 1;
                if c.socket.is_some() {
                    cs.channels_open += 1;
                }
            }
            channels.insert(
                id.clone(),
                ChannelStats {
                    client: c.client.clone(),
                    token_serial: c.token_serial,
                    topics: c.topics.len(),
                    connected: c.socket.is_some(),
                    connections: c.connections,
                    subscriptions: c.subscriptions,
                    connected_at_ms: c.connected_at_ms,
                    disconnected_at_ms: c.disconnected_at_ms,
                    stopped: c.stopped.map(str::to_string),
                },
            );
        }
        for (client, n) in &chans.created {
            clients.entry(client.clone()).or_default().channels_created = *n;
        }
        for (client, n) in &chans.replaced {
            clients.entry(client.clone()).or_default().channels_replaced = *n;
        }
        drop(chans);
        GenesysStats {
            clients,
            channels,
            topics: self.feeds.stats(),
            heartbeats: self.heartbeats.load(Ordering::Relaxed),
            pings: self.pings.load(Ordering::Relaxed),
            pongs: self.pongs.load(Ordering::Relaxed),
            socket_closing: self.socket_closing.load(Ordering::Relaxed),
        }
    }
}

/// When live channel `id` stops unless extended; a channel found dead is stopped here.
fn live(shared: &Shared, feeds: &Feeds, chans: &mut Channels, id: &str) -> Option<Instant> {
    let ch = chans.by_id.get(id)?;
    if ch.stopped.is_some() {
        return None;
    }
    let token = lock(&shared.tokens).check(&ch.token.0, Some(Platform::Genesys));
    let now = Instant::now();
    let why = match token {
        None => Some(TOKEN_EXPIRED),
        Some(_) if ch.expires <= now => Some(EXPIRED),
        Some(_) => None,
    };
    if let Some(why) = why {
        stop(shared, feeds, chans, id, why);
        return None;
    }
    token.map(|t| t.expires.min(ch.expires))
}

/// Stop channel `id`: no more events, its socket is told to close.
fn stop(shared: &Shared, feeds: &Feeds, chans: &mut Channels, id: &str, why: &'static str) {
    let Some(ch) = chans.by_id.get_mut(id) else {
        return;
    };
    ch.stopped = Some(why);
    for t in &ch.topics {
        if let Some(topic) = feeds.get(t) {
            topic.remove(ch.serial);
        }
    }
    ch.outlet.detach();
    if let Some(socket) = ch.socket.take() {
        shared.order(socket, Ctl::Order(Order::Stop(why)));
    }
}

/// What the channel APIs return for one channel.
fn view(shared: &Shared, id: &str, expires_ms: u64) -> ChannelView {
    ChannelView {
        id: id.to_string(),
        connect_uri: format!("{}/channels/{id}", shared.ws_base()),
        expires: iso8601_ms(expires_ms),
    }
}

/// A fresh id shaped like the platform's: `streaming-0-` and 26 lower-case letters and digits.
fn channel_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..26)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("streaming-0-{tail}")
}

/// Whether the platform takes `topic` as a subscription.
fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= MAX_TOPIC_LEN && topic.starts_with("v2.")
}

/// Whole milliseconds of `d`, saturating.
fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_checked_like_the_platform() {
        assert!(valid_topic("v2.users.abc.presence"));
        assert!(valid_topic("v2.users.abc?presence&routingStatus"));
        assert!(!valid_topic(""));
        assert!(!valid_topic("users.abc.presence"));
        assert!(!valid_topic(&format!("v2.{}", "x".repeat(198))));
        assert!(valid_topic(&format!("v2.{}", "x".repeat(197))));
    }

    #[test]
    fn channel_ids_look_like_the_platforms() {
        let (a, b) = (channel_id(), channel_id());
        assert_ne!(a, b);
        assert!(a.starts_with("streaming-0-"));
        assert_eq!(a.len(), "streaming-0-".len() + 26);
    }
}
