//! Rotation while a link is up: the in-stream token message (generic, cxone-dfo), and
//! make-before-break for token-bound sockets (genesys): a successor link is opened with the
//! new token (or because a channel nears its expiry, or the platform announced a close), both
//! are read through an [`Overlap`], and the old link is retired only once an event seen on both
//! proves the handover, or the bounded overlap has passed. The app sees neither `dropped` nor
//! `gap`; the stream's connection id moves to the successor in `/status` and in the store.

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use streamkeeper_api::EventId;
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

/// The rotation state of one drive loop: nothing (no allocation) while no rotation is under
/// way, which is nearly all of an idle stream's life. Inline, the work's 200 bytes were part of
/// every stream's session future (1,360 bytes, served from the allocator's 1,536-byte class).
pub(super) struct Rotating {
    work: Option<Box<Work>>,
}

/// What a rotation under way keeps.
#[derive(Default)]
struct Work {
    /// In-stream: the token sent and not yet acked.
    pending_refresh: Option<(u64, Arc<Token>)>,
    /// In-stream: a token held back while the rate-limit gate is closed.
    unsent_refresh: Option<(u64, Arc<Token>)>,
    /// Sockets whose setup the platform refused (set up again with the next token).
    refused_sockets: BTreeSet<usize>,
    /// Sockets to greet again once the gate opens.
    regreet: BTreeSet<usize>,
    /// When deferred sends may go (the gate opens).
    resend_at: Option<Instant>,
    opening: Option<Opening>,
    opening_task: Option<JoinHandle<()>>,
    /// The successor, read alongside the current link during the overlap.
    successor: Option<Box<Link>>,
    /// Boxed: it exists only during a handover, which is shorter than the rest of the work.
    overlap: Option<Box<Overlap>>,
    /// Why a successor is wanted, while one is.
    wanted: Option<&'static str>,
    retry_at: Option<Instant>,
    backoff: Backoff,
}

impl Work {
    /// Nothing under way and nothing to remember. A failed successor leaves `wanted` set, and
    /// with it the retry and its backoff step, until a promotion resets them; a retry with
    /// nothing wanted is never woken for (`next_wake`), so it does not keep the work.
    fn settled(&self) -> bool {
        self.pending_refresh.is_none()
            && self.unsent_refresh.is_none()
            && self.refused_sockets.is_empty()
            && self.regreet.is_empty()
            && self.resend_at.is_none()
            && self.opening.is_none()
            && self.opening_task.is_none()
            && self.successor.is_none()
            && self.overlap.is_none()
            && self.wanted.is_none()
    }

    fn idle(&self) -> bool {
        self.opening.is_none() && self.successor.is_none()
    }
}

impl Rotating {
    pub(super) fn new() -> Self {
        Self { work: None }
    }

    /// The work, begun if none is under way.
    fn work(&mut self) -> &mut Work {
        self.work.get_or_insert_with(Box::default)
    }

    /// Lets the work go once a rotation is over (called between the drive loop's waits).
    pub(super) fn settle(&mut self) {
        if self.work.as_deref().is_some_and(Work::settled) {
            self.work = None;
        }
    }

    /// The successor and the opening, to wait on both at once.
    pub(super) fn waits(&mut self) -> (Option<&mut Link>, Option<&mut Opening>) {
        match self.work.as_deref_mut() {
            Some(w) => (w.successor.as_deref_mut(), w.opening.as_mut()),
            None => (None, None),
        }
    }

    /// The opened successor (or why it failed), from the opening in `opening`.
    pub(super) async fn opened(opening: Option<&mut Opening>) -> Option<Result<Link, OpenFailure>> {
        opening?.await.ok()
    }

    /// The successor, during an overlap.
    pub(super) fn successor(&self) -> Option<&Link> {
        self.work.as_ref()?.successor.as_deref()
    }

    /// The in-stream token sent and not acked yet, taken.
    pub(super) fn take_pending_refresh(&mut self) -> Option<(u64, Arc<Token>)> {
        self.work.as_mut()?.pending_refresh.take()
    }

    /// The platform refused socket `i`'s setup: set it up again with the next token.
    pub(super) fn refuse(&mut self, i: usize) {
        self.work().refused_sockets.insert(i);
    }

    /// The sockets whose setup was refused, forgotten (they are set up again now).
    pub(super) fn take_refused(&mut self) -> BTreeSet<usize> {
        self.work
            .as_mut()
            .map(|w| std::mem::take(&mut w.refused_sockets))
            .unwrap_or_default()
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
            Side::New => self.work.as_mut()?.successor.as_mut()?.sockets.get_mut(i),
        }
    }

    /// An event arrived on `side`.
    pub(super) fn saw(&mut self, side: Side, id: &EventId) {
        if let Some(o) = self.work.as_mut().and_then(|w| w.overlap.as_mut()) {
            o.saw(side, id);
        }
    }

    /// Whether an event was seen on both links.
    pub(super) fn confirmed(&self) -> bool {
        self.work
            .as_ref()
            .and_then(|w| w.overlap.as_deref())
            .is_some_and(Overlap::confirmed)
    }

    /// The successor delivers and an event on both links proves nothing fell between them.
    pub(super) fn handover_proven(&self) -> bool {
        self.confirmed() && self.successor().is_some_and(Link::ready)
    }

    /// The next time the drive loop must wake for rotation work.
    pub(super) fn next_wake(&self, s: &Session, link: &Link) -> Option<Instant> {
        let mut wake: Option<Instant> = None;
        let mut at = |t: Instant| wake = Some(wake.map_or(t, |w| w.min(t)));
        let w = self.work.as_deref();
        if let Some(o) = w
            .filter(|w| w.successor.is_some())
            .and_then(|w| w.overlap.as_ref())
        {
            at(o.deadline());
        }
        if let Some(t) = w
            .filter(|w| w.wanted.is_some() && w.idle())
            .and_then(|w| w.retry_at)
        {
            at(t);
        }
        if let Some(t) = w.and_then(|w| w.resend_at) {
            at(t);
        }
        if s.ctx.adapter.rotation() == Rotation::NewSocket
            && self.wanted().is_none()
            && self.idle()
            && let Some(due) = expiry_due(link, s.ctx.spec.token.refresh_lead)
        {
            at(due);
        }
        wake
    }

    fn idle(&self) -> bool {
        self.work.as_deref().is_none_or(Work::idle)
    }

    fn wanted(&self) -> Option<&'static str> {
        self.work.as_ref()?.wanted
    }

    /// A successor is wanted (new token, expiry, announced close): open one if none is open.
    pub(super) fn want_successor(&mut self, s: &mut Session, why: &'static str) {
        let w = self.work();
        if w.wanted.is_none() {
            w.wanted = Some(why);
        }
        if !w.idle() {
            return;
        }
        self.start(s);
    }

    fn start(&mut self, s: &mut Session) {
        let w = self.work();
        let now = Instant::now();
        if let Some(open_at) = s.gate.closed_until(now) {
            w.retry_at = Some(open_at);
            return;
        }
        let view = s.ctx.tokens.borrow().clone();
        let Some(token) = view.token.filter(|t| t.valid_at(now)) else {
            // No valid token now: try again when one comes (or after a retry step).
            w.retry_at = Some(now + s.ctx.spec.token.retry);
            return;
        };
        let (tx, rx) = oneshot::channel();
        let opener = s.opener();
        let resume = s.last_seen.clone();
        let id = s.next_connection_id();
        let interval = s.ctx.spec.heartbeat.interval;
        let generation = view.generation;
        tracing::info!(stream = %s.stream(), connection = %id, why = w.wanted.unwrap_or("rotation"), "opening the next socket before dropping the current one");
        let task = tokio::spawn(async move {
            let link = opener
                .open(token, generation, resume.as_ref(), id, || {
                    ping_phase(interval)
                })
                .await;
            let _ = tx.send(link);
        });
        w.opening = Some(rx);
        w.opening_task = Some(task);
        w.retry_at = None;
    }

    /// The successor's sockets failed before the handover: keep the current link, try again
    /// after a backoff step.
    pub(super) fn successor_lost(&mut self, s: &mut Session) {
        let w = self.work();
        if let Some(l) = w.successor.take() {
            for sock in l.sockets {
                sock.reset();
            }
        }
        w.overlap = None;
        let delay =
            w.backoff
                .next_delay((&s.ctx.spec.reconnect).into(), rand::random::<f64>(), None);
        w.retry_at = Some(Instant::now() + delay);
    }

    /// Retires the current link and puts the successor in its place. `lost_from`: the old
    /// link failed before the handover was proven, so what was in flight since then is a gap.
    pub(super) fn promote(&mut self, s: &mut Session, link: &mut Link, lost_from: Option<u64>) {
        let Some(w) = self.work.as_deref_mut() else {
            return;
        };
        let Some(next) = w.successor.take() else {
            return;
        };
        let overlap = w.overlap.take();
        let why = w.wanted.take().unwrap_or("rotation");
        w.retry_at = None;
        w.backoff.reset();
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
                why,
            },
        );
        s.token_ok(link.generation);
        // The token moved on again while the successor was opening: rotate once more.
        let view_generation = s.ctx.tokens.borrow().generation;
        if view_generation > link.generation {
            self.want_successor(s, "token rotation");
        }
    }

    /// Handles what the successor's task produced.
    fn on_opened(&mut self, s: &mut Session, opened: Option<Result<Link, OpenFailure>>) {
        let w = self.work();
        w.opening = None;
        w.opening_task = None;
        match opened {
            Some(Ok(next)) => {
                tracing::debug!(stream = %s.stream(), connection = %next.id, "successor open; overlapping");
                // A quiet stream has nothing in flight: past the bound the old link goes anyway.
                let bound = s.ctx.spec.heartbeat.timeout;
                w.overlap = Some(Box::new(Overlap::new(Instant::now(), bound)));
                w.successor = Some(Box::new(next));
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
                let delay = w.backoff.next_delay(
                    (&s.ctx.spec.reconnect).into(),
                    rand::random::<f64>(),
                    None,
                );
                let at = now + delay;
                w.retry_at = Some(s.gate.closed_until(now).map_or(at, |g| g.max(at)));
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
        let w = self.work();
        if let Some(open_at) = s.gate.closed_until(Instant::now()) {
            w.unsent_refresh = Some((generation, token));
            w.resend_at = Some(open_at);
            return;
        }
        for sock in &mut link.sockets {
            if let Some(frame) = sock.conn.refresh_frame(token.value.expose()) {
                sock.up.ws_mut().queue_text(&frame);
            }
        }
        w.pending_refresh = Some((generation, token));
    }

    /// The platform rate limited socket `i`: set it up again once the gate opens, if it is
    /// not set up.
    pub(super) fn resend_after_gate(&mut self, s: &Session, link: &Link, side: Side, i: usize) {
        if side == Side::New {
            return;
        }
        let w = self.work();
        if link.sockets.get(i).is_some_and(|sock| !sock.ready) {
            w.regreet.insert(i);
        }
        w.resend_at = s.gate.closed_until(Instant::now());
    }

    /// Stops what is in flight (the drive loop ends).
    pub(super) fn abandon(&mut self) {
        let Some(w) = self.work.as_deref_mut() else {
            return;
        };
        if let Some(t) = w.opening_task.take() {
            t.abort();
        }
        w.opening = None;
        if let Some(l) = w.successor.take() {
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
        if let Some(w) = r.work.as_deref()
            && w.successor.is_some()
            && w.overlap.as_ref().is_some_and(|o| now >= o.deadline())
        {
            if w.successor.as_deref().is_some_and(Link::ready) {
                tracing::debug!(stream = %self.stream(), "overlap bound reached without a common event; retiring the old socket");
                r.promote(self, link, None);
            } else {
                tracing::warn!(stream = %self.stream(), "the successor did not get ready within the overlap bound");
                r.successor_lost(self);
            }
        }
        if let Some(w) = r.work.as_deref_mut()
            && w.retry_at.is_some_and(|t| now >= t)
            && w.idle()
        {
            w.retry_at = None;
            if w.wanted.is_some() {
                r.start(self);
            }
        }
        if let Some(w) = r.work.as_deref_mut() {
            if let Some(open_at) = self
                .gate
                .closed_until(now)
                .filter(|_| w.resend_at.is_some())
            {
                // The gate was closed further meanwhile: wait for it.
                w.resend_at = Some(open_at);
            } else if w.resend_at.is_some_and(|t| now >= t) {
                w.resend_at = None;
                let unsent = w.unsent_refresh.take();
                let regreet = std::mem::take(&mut w.regreet);
                if let Some((generation, token)) = unsent {
                    r.refresh_in_stream(self, link, generation, token);
                }
                let token = Arc::clone(&link.token);
                for i in regreet {
                    if let Some(sock) = link.sockets.get_mut(i).filter(|s| !s.ready) {
                        for f in sock.conn.greeting(token.value.expose()) {
                            sock.up.ws_mut().queue_text(&f);
                        }
                    }
                }
            }
        }
        if self.ctx.adapter.rotation() == Rotation::NewSocket
            && r.wanted().is_none()
            && r.idle()
            && expiry_due(link, self.ctx.spec.token.refresh_lead).is_some_and(|due| now >= due)
        {
            r.want_successor(self, "channel expiry");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_exists_only_while_a_rotation_has_something_to_remember() {
        let mut r = Rotating::new();
        assert!(
            r.work.is_none(),
            "an idle stream's drive loop allocates nothing"
        );
        r.refuse(1);
        r.settle();
        assert!(
            r.work.is_some(),
            "a refused socket waits for the next token"
        );
        assert_eq!(r.take_refused(), BTreeSet::from([1]));
        r.settle();
        assert!(r.work.is_none(), "let go once nothing is left");
        assert!(r.take_refused().is_empty() && r.take_pending_refresh().is_none());
        assert!(r.idle() && r.waits().1.is_none() && r.successor().is_none());
    }
}
