//! Rotation while a link is up: the in-stream token message (generic, cxone-dfo), and
//! make-before-break for token-bound sockets (genesys): a successor link is opened with the
//! new token (or because a channel nears its expiry, or the platform announced a close), both
//! are read through an [`Overlap`], and the old link is retired only once an event seen on both
//! proves the handover, or the bounded overlap has passed. The app sees neither `dropped` nor
//! `gap`; the stream's connection id moves to the successor in `/status` and in the store.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use streamkeeper_api::{EventId, StreamSpec};
use tokio::{sync::oneshot, task::JoinHandle, time::Instant};

use super::{
    SessionEvent,
    connect::OpenFailure,
    link::{Link, Socket},
    overlap::{Overlap, Side},
    session::{Session, ping_phase},
};
use crate::{auth::Token, backoff::Backoff, platforms::Rotation};

/// When a channel of `link` is due for replacement: `lead` (`token.refreshLead`) before its
/// expiry, or half-way through its life when the lead is longer than that. Read from the spec
/// at each use rather than kept in [`Rotating`], which lives in every idle stream's future.
fn expiry_due(link: &Link, lead: Duration) -> Option<Instant> {
    let expires = link.sockets.iter().filter_map(|s| s.conn.expires()).min()?;
    let life = expires.saturating_duration_since(link.opened);
    Some(expires - lead.min(life / 2))
}

/// A successor being opened in the background.
type Opening = oneshot::Receiver<Result<Link, OpenFailure>>;

/// The rotation state of one drive loop.
pub(super) struct Rotating {
    /// In-stream: the token sent and not yet acked.
    pub(super) pending_refresh: Option<(u64, Arc<Token>)>,
    /// In-stream: a token held back while the rate-limit gate is closed.
    unsent_refresh: Option<(u64, Arc<Token>)>,
    /// Sockets whose setup the platform refused (set up again with the next token).
    pub(super) refused_sockets: BTreeSet<usize>,
    /// Sockets to greet again once the gate opens.
    regreet: BTreeSet<usize>,
    /// When deferred sends may go (the gate opens).
    resend_at: Option<Instant>,
    pub(super) opening: Option<Opening>,
    opening_task: Option<JoinHandle<()>>,
    /// The successor, read alongside the current link during the overlap. Boxed, as the
    /// overlap is: inline it would grow every idle stream's drive loop by a link's 80 bytes.
    pub(super) successor: Option<Box<Link>>,
    /// Boxed: it exists only during a handover, and inline it would grow every idle stream's
    /// drive loop by its 208 bytes.
    overlap: Option<Box<Overlap>>,
    /// Why a successor is wanted, while one is.
    wanted: Option<&'static str>,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

impl Rotating {
    pub(super) fn new(spec: &StreamSpec) -> Self {
        Self {
            pending_refresh: None,
            unsent_refresh: None,
            refused_sockets: BTreeSet::new(),
            regreet: BTreeSet::new(),
            resend_at: None,
            opening: None,
            opening_task: None,
            successor: None,
            overlap: None,
            wanted: None,
            retry_at: None,
            backoff: Backoff::new(spec.reconnect.initial, spec.reconnect.max),
        }
    }

    /// Whether a successor is being opened.
    pub(super) fn opening(&self) -> bool {
        self.opening.is_some()
    }

    /// The opened successor (or why it failed), from the opening in `opening`.
    pub(super) async fn opened(opening: &mut Option<Opening>) -> Option<Result<Link, OpenFailure>> {
        let rx = opening.as_mut()?;
        rx.await.ok()
    }

    /// The socket `i` of `side`.
    pub(super) fn socket_mut<'a>(
        &'a mut self,
        link: &'a mut Link,
        side: Side,
        i: usize,
    ) -> Option<&'a mut Socket> {
        match side {
            Side::Old => link.sockets.get_mut(i),
            Side::New => self.successor.as_mut()?.sockets.get_mut(i),
        }
    }

    /// An event arrived on `side`.
    pub(super) fn saw(&mut self, side: Side, id: &EventId) {
        if let Some(o) = &mut self.overlap {
            o.saw(side, id);
        }
    }

    /// Whether an event was seen on both links.
    pub(super) fn confirmed(&self) -> bool {
        self.overlap.as_deref().is_some_and(Overlap::confirmed)
    }

    /// The successor delivers and an event on both links proves nothing fell between them.
    pub(super) fn handover_proven(&self) -> bool {
        self.confirmed() && self.successor.as_ref().is_some_and(|l| l.ready())
    }

    /// The next time the drive loop must wake for rotation work.
    pub(super) fn next_wake(&self, s: &Session, link: &Link) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        if let Some(o) = self.overlap.as_ref().filter(|_| self.successor.is_some()) {
            at(o.deadline());
        }
        if let Some(t) = self
            .retry_at
            .filter(|_| self.wanted.is_some() && self.idle())
        {
            at(t);
        }
        if let Some(t) = self.resend_at {
            at(t);
        }
        if s.ctx.adapter.rotation() == Rotation::NewSocket
            && self.wanted.is_none()
            && self.idle()
            && let Some(due) = expiry_due(link, s.ctx.spec.token.refresh_lead)
        {
            at(due);
        }
        wake
    }

    fn idle(&self) -> bool {
        self.opening.is_none() && self.successor.is_none()
    }

    /// A successor is wanted (new token, expiry, announced close): open one if none is open.
    pub(super) fn want_successor(&mut self, s: &mut Session, link: &Link, why: &'static str) {
        if self.wanted.is_none() {
            self.wanted = Some(why);
        }
        if !self.idle() {
            return;
        }
        let _ = link;
        self.start(s);
    }

    fn start(&mut self, s: &mut Session) {
        let now = Instant::now();
        if let Some(open_at) = s.gate.closed_until(now) {
            self.retry_at = Some(open_at);
            return;
        }
        let view = s.ctx.tokens.borrow().clone();
        let Some(token) = view.token.filter(|t| t.valid_at(now)) else {
            // No valid token now: try again when one comes (or after a retry step).
            self.retry_at = Some(now + s.ctx.spec.token.retry);
            return;
        };
        let (tx, rx) = oneshot::channel();
        let opener = s.opener();
        let resume = s.last_seen.clone();
        let id = s.next_connection_id();
        let interval = s.ctx.spec.heartbeat.interval;
        let generation = view.generation;
        tracing::info!(stream = %s.stream(), connection = %id, why = self.wanted.unwrap_or("rotation"), "opening the next socket before dropping the current one");
        let task = tokio::spawn(async move {
            let link = opener
                .open(token, generation, resume.as_ref(), id, || {
                    ping_phase(interval)
                })
                .await;
            let _ = tx.send(link);
        });
        self.opening = Some(rx);
        self.opening_task = Some(task);
        self.retry_at = None;
    }

    /// The successor's sockets failed before the handover: keep the current link, try again
    /// after a backoff step.
    pub(super) fn successor_lost(&mut self, s: &mut Session) {
        if let Some(l) = self.successor.take() {
            for sock in l.sockets {
                sock.reset();
            }
        }
        self.overlap = None;
        let delay = self.backoff.next_delay(rand::random::<f64>(), None);
        self.retry_at = Some(Instant::now() + delay);
        let _ = s;
    }

    /// Retires the current link and puts the successor in its place. `lost_from`: the old
    /// link failed before the handover was proven, so what was in flight since then is a gap.
    pub(super) fn promote(&mut self, s: &mut Session, link: &mut Link, lost_from: Option<u64>) {
        let Some(next) = self.successor.take() else {
            return;
        };
        let overlap = self.overlap.take();
        let old = std::mem::replace(link, *next);
        let proven = overlap.as_deref().is_some_and(Overlap::confirmed);
        let overlap_for = overlap
            .as_ref()
            .map(|o| o.elapsed(Instant::now()))
            .unwrap_or_default();
        retire(s, old.sockets, &old.token);
        if let Some(from) = lost_from {
            s.gap(
                from,
                "the old socket failed before the new one had taken over",
            );
        }
        s.status().connection = Some(link.id.clone());
        s.ctx.observer.observe(
            &s.ctx.spec.id,
            SessionEvent::Rotated {
                from: old.id,
                to: link.id.clone(),
                overlap: overlap_for,
                proven,
                why: self.wanted.unwrap_or("rotation"),
            },
        );
        s.token_ok(link.generation);
        self.wanted = None;
        self.retry_at = None;
        self.backoff.reset();
        // The token moved on again while the successor was opening: rotate once more.
        let view_generation = s.ctx.tokens.borrow().generation;
        if view_generation > link.generation {
            self.want_successor(s, link, "token rotation");
        }
    }

    /// Handles what the successor's task produced.
    fn on_opened(&mut self, s: &mut Session, opened: Option<Result<Link, OpenFailure>>) {
        self.opening = None;
        self.opening_task = None;
        match opened {
            Some(Ok(next)) => {
                tracing::debug!(stream = %s.stream(), connection = %next.id, "successor open; overlapping");
                // A quiet stream has nothing in flight: past the bound the old link goes anyway.
                let bound = s.ctx.spec.heartbeat.timeout;
                self.overlap = Some(Box::new(Overlap::new(Instant::now(), bound)));
                self.successor = Some(Box::new(next));
            }
            Some(Err(failure)) => {
                tracing::warn!(stream = %s.stream(), error = %failure.error, "successor socket failed; keeping the current one");
                let now = Instant::now();
                if failure.token_rejected {
                    let generation = s.ctx.tokens.borrow().generation;
                    s.ctx.refresh_now.refused(generation);
                }
                if let Some(limit) = failure.retry_after {
                    s.gate.hit(limit, now);
                }
                let delay = self.backoff.next_delay(rand::random::<f64>(), None);
                let at = now + delay;
                self.retry_at = Some(s.gate.closed_until(now).map_or(at, |g| g.max(at)));
            }
            None => {}
        }
    }

    /// In-stream rotation: the token message on every socket of the link, unless the
    /// rate-limit gate is closed (then when it opens).
    pub(super) fn refresh_in_stream(
        &mut self,
        s: &mut Session,
        link: &mut Link,
        generation: u64,
        token: Arc<Token>,
    ) {
        if let Some(open_at) = s.gate.closed_until(Instant::now()) {
            self.unsent_refresh = Some((generation, token));
            self.resend_at = Some(open_at);
            return;
        }
        for sock in &mut link.sockets {
            if let Some(frame) = sock.conn.refresh_frame(token.value.expose()) {
                sock.up.ws_mut().queue_text(&frame);
            }
        }
        self.pending_refresh = Some((generation, token));
    }

    /// The platform rate limited socket `i`: set it up again once the gate opens, if it is
    /// not set up.
    pub(super) fn resend_after_gate(&mut self, s: &Session, link: &Link, side: Side, i: usize) {
        if side == Side::New {
            return;
        }
        if link.sockets.get(i).is_some_and(|sock| !sock.ready) {
            self.regreet.insert(i);
        }
        self.resend_at = s.gate.closed_until(Instant::now());
    }

    /// Stops what is in flight (the drive loop ends).
    pub(super) fn abandon(&mut self) {
        if let Some(t) = self.opening_task.take() {
            t.abort();
        }
        self.opening = None;
        if let Some(l) = self.successor.take() {
            for sock in l.sockets {
                sock.reset();
            }
        }
    }
}

/// Closes retired sockets politely (their peer is alive), then runs their retire steps.
fn retire(s: &Session, sockets: Vec<Socket>, token: &Token) {
    for sock in sockets {
        let step = sock.conn.retire(&s.ctx.http, token.value.expose());
        let ws = sock.up.into_ws();
        tokio::spawn(async move {
            ws.close(1000, "rotated", Duration::from_secs(1)).await;
            if let Some(step) = step {
                let _ = tokio::time::timeout(Duration::from_secs(15), step).await;
            }
        });
    }
}

impl Session {
    /// The successor's task finished.
    pub(super) fn on_successor_opened(
        &mut self,
        _link: &mut Link,
        r: &mut Rotating,
        opened: Option<Result<Link, OpenFailure>>,
    ) {
        r.on_opened(self, opened);
    }

    /// A rotation timer fired: the overlap's bound, a successor retry, a channel's expiry,
    /// or the rate-limit gate opening.
    pub(super) fn on_wake(&mut self, link: &mut Link, r: &mut Rotating) {
        let now = Instant::now();
        if r.successor.is_some() && r.overlap.as_ref().is_some_and(|o| now >= o.deadline()) {
            if r.successor.as_ref().is_some_and(|l| l.ready()) {
                tracing::debug!(stream = %self.stream(), "overlap bound reached without a common event; retiring the old socket");
                r.promote(self, link, None);
            } else {
                tracing::warn!(stream = %self.stream(), "the successor did not get ready within the overlap bound");
                r.successor_lost(self);
            }
        }
        if r.retry_at.is_some_and(|t| now >= t) && r.idle() {
            r.retry_at = None;
            if r.wanted.is_some() {
                r.start(self);
            }
        }
        if let Some(open_at) = self
            .gate
            .closed_until(now)
            .filter(|_| r.resend_at.is_some())
        {
            // The gate was closed further meanwhile: wait for it.
            r.resend_at = Some(open_at);
        } else if r.resend_at.is_some_and(|t| now >= t) {
            r.resend_at = None;
            if let Some((generation, token)) = r.unsent_refresh.take() {
                r.refresh_in_stream(self, link, generation, token);
            }
            let token = Arc::clone(&link.token);
            for i in std::mem::take(&mut r.regreet) {
                if let Some(sock) = link.sockets.get_mut(i).filter(|s| !s.ready) {
                    for f in sock.conn.greeting(token.value.expose()) {
                        sock.up.ws_mut().queue_text(&f);
                    }
                }
            }
        }
        if self.ctx.adapter.rotation() == Rotation::NewSocket
            && r.wanted.is_none()
            && r.idle()
            && expiry_due(link, self.ctx.spec.token.refresh_lead).is_some_and(|due| now >= due)
        {
            r.want_successor(self, link, "channel expiry");
        }
    }
}
