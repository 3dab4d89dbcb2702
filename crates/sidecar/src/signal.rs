//! A one-value broadcast for a stream's own signals (its stop reason, its lease's validity and
//! loss, its last acked id): the subset of `tokio::sync::watch` those use, on one `Notify`.
//!
//! Why not `tokio::sync::watch`: each of its channels carries eight `Notify` slots (spread for
//! many concurrent receivers), 344–368 bytes a channel, and a stream had five of them: 1.8 KiB
//! of every idle stream's 10.3 KiB (census of `cargo bench -p streamkeeper --features
//! heap-stats --bench sidecar_scale`). These signals have one or two receivers each; one
//! `Notify` makes a channel 72–96 bytes. The semantics are watch's: a receiver sees the
//! newest value and whether it changed since it last looked; `changed` fails once the sender
//! is gone and nothing new is left to see.
//!
//! A stream's supervisor waits on four of them at once (acks, lease validity, lease loss,
//! stop): one `Notified` of 104 bytes each in its future, which lives as long as the stream.
//! Signals made in one [`Group`] share its `Notify` instead, so one wait covers them all; a
//! receiver woken by a sibling's change sees nothing new and waits on. Every signal is of a
//! group (a lone one of its own): the `Notify` is then not in each signal's allocation.

use std::{
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use tokio::sync::{Notify, futures::Notified};

/// The sender went away: no value will change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signal closed: its sender is gone")]
pub struct Closed;

/// A borrowed view of the current value. Not held across an `.await`.
pub type Ref<'a, T> = MutexGuard<'a, T>;

/// Signals woken together: a change of any of them wakes every waiter of the group.
#[derive(Clone, Default)]
pub struct Group(Arc<Notify>);

impl fmt::Debug for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Group")
    }
}

impl Group {
    /// A signal of this group holding `init`, and its first receiver.
    pub fn channel<T>(&self, init: T) -> (Sender<T>, Receiver<T>) {
        let shared = Arc::new(Shared {
            value: Mutex::new(init),
            version: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            notify: self.clone(),
        });
        let rx = Receiver {
            shared: Arc::clone(&shared),
            seen: 0,
        };
        (Sender { shared }, rx)
    }

    /// Completes at the next change (or close) of any signal of the group. Enable it, then
    /// look at the signals, then await it: a change between the look and the wait still wakes.
    pub fn notified(&self) -> Notified<'_> {
        self.0.notified()
    }

    /// Wakes every waiter of the group, for a change kept outside its signals (a hub's acks).
    pub fn wake(&self) {
        self.0.notify_waiters();
    }
}

struct Shared<T> {
    value: Mutex<T>,
    /// Bumped (under `value`'s lock) on every change.
    version: AtomicU64,
    closed: AtomicBool,
    notify: Group,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, T> {
        self.value.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sets the value; dropping it closes the signal.
pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

/// Sees the newest value and waits for changes.
pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
    seen: u64,
}

/// A signal holding `init` (in a group of its own), and its first receiver.
pub fn channel<T>(init: T) -> (Sender<T>, Receiver<T>) {
    Group::default().channel(init)
}

impl<T> Sender<T> {
    /// Sets the value, waking every receiver; returns the old one.
    pub fn send_replace(&self, value: T) -> T {
        let old = {
            let mut v = self.shared.lock();
            let old = std::mem::replace(&mut *v, value);
            self.shared.version.fetch_add(1, Ordering::Release);
            old
        };
        self.shared.notify.0.notify_waiters();
        old
    }

    /// Lets `modify` change the value in place; receivers are woken only if it says it did.
    pub fn send_if_modified(&self, modify: impl FnOnce(&mut T) -> bool) -> bool {
        let modified = {
            let mut v = self.shared.lock();
            let modified = modify(&mut v);
            if modified {
                self.shared.version.fetch_add(1, Ordering::Release);
            }
            modified
        };
        if modified {
            self.shared.notify.0.notify_waiters();
        }
        modified
    }

    /// The current value.
    pub fn borrow(&self) -> Ref<'_, T> {
        self.shared.lock()
    }

    /// The group this signal wakes.
    pub fn group(&self) -> &Group {
        &self.shared.notify
    }

    /// A new receiver that has seen the current value.
    pub fn subscribe(&self) -> Receiver<T> {
        let _v = self.shared.lock();
        Receiver {
            shared: Arc::clone(&self.shared),
            seen: self.shared.version.load(Ordering::Acquire),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.notify.0.notify_waiters();
    }
}

impl<T> Receiver<T> {
    /// A new signal in this one's group, so a waiter on the group sees its changes too.
    pub fn sibling<U>(&self, init: U) -> (Sender<U>, Receiver<U>) {
        self.shared.notify.channel(init)
    }

    /// The group this signal wakes.
    pub fn group(&self) -> &Group {
        &self.shared.notify
    }

    /// The current value, without marking it seen.
    pub fn borrow(&self) -> Ref<'_, T> {
        self.shared.lock()
    }

    /// The current value, marked seen: `changed` waits for a newer one.
    pub fn borrow_and_update(&mut self) -> Ref<'_, T> {
        let v = self.shared.lock();
        self.seen = self.shared.version.load(Ordering::Acquire);
        v
    }

    /// Whether a value newer than the last one seen is there; `Closed` when there is none and
    /// the sender is gone.
    pub fn has_changed(&self) -> Result<bool, Closed> {
        if self.shared.version.load(Ordering::Acquire) != self.seen {
            Ok(true)
        } else if self.shared.closed.load(Ordering::Acquire) {
            Err(Closed)
        } else {
            Ok(false)
        }
    }

    /// Waits for a value newer than the last one seen and marks it seen; `Closed` when the
    /// sender is gone and there is nothing newer. Cancel-safe.
    pub fn changed(&mut self) -> Changed<'_, T> {
        let Receiver { shared, seen } = self;
        let shared: &Shared<T> = shared;
        Changed {
            seen,
            shared,
            notified: shared.notify.0.notified(),
        }
    }

    /// Waits until the value satisfies `f` (the current one first) and returns a copy of it;
    /// `Closed` when the sender went away first.
    pub async fn wait_for(&mut self, mut f: impl FnMut(&T) -> bool) -> Result<T, Closed>
    where
        T: Clone,
    {
        loop {
            {
                let v = self.borrow_and_update();
                if f(&v) {
                    return Ok(v.clone());
                }
            }
            self.changed().await?;
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Receiver::changed`]. Written out: as an `async fn` it kept the receiver
    /// twice and a pointer to its pinned registration beside it, 104 bytes against these 80,
    /// and a stream's session future (alive as long as the stream) holds one.
    #[must_use = "futures do nothing unless polled"]
    pub struct Changed<'a, T> {
        seen: &'a mut u64,
        shared: &'a Shared<T>,
        #[pin]
        notified: Notified<'a>,
    }
}

impl<T> std::future::Future for Changed<'_, T> {
    type Output = Result<(), Closed>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let mut this = self.project();
        let shared: &Shared<T> = this.shared;
        loop {
            // Registered before looking, so a change between the look and the wait still wakes.
            this.notified.as_mut().enable();
            let version = shared.version.load(Ordering::Acquire);
            if version != **this.seen {
                **this.seen = version;
                return std::task::Poll::Ready(Ok(()));
            }
            if shared.closed.load(Ordering::Acquire) {
                return std::task::Poll::Ready(Err(Closed));
            }
            std::task::ready!(this.notified.as_mut().poll(cx));
            // Woken by a sibling's change, or by this one's: register again and look.
            this.notified.set(shared.notify.0.notified());
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            seen: self.seen,
        }
    }
}

impl<T: fmt::Debug> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("value", &*self.shared.lock())
            .finish_non_exhaustive()
    }
}

impl<T: fmt::Debug> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("value", &*self.shared.lock())
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    // Paused clock: a `timeout` that ends proves nothing was ready when the runtime went idle.
    #[tokio::test(start_paused = true)]
    async fn a_receiver_sees_each_newest_value_once() {
        let (tx, mut rx) = channel(0u32);
        assert_eq!(*rx.borrow(), 0);
        tx.send_replace(1);
        tx.send_replace(2);
        rx.changed().await.expect("open");
        assert_eq!(*rx.borrow_and_update(), 2, "the newest value, not each one");
        let waiting = tokio::time::timeout(Duration::from_millis(20), rx.changed()).await;
        assert!(waiting.is_err(), "nothing newer: changed waits");
    }

    #[tokio::test]
    async fn a_change_while_waiting_wakes_the_receiver() {
        let (tx, mut rx) = channel(None::<u8>);
        let waiter = tokio::spawn(async move { rx.wait_for(Option::is_some).await });
        tokio::task::yield_now().await;
        assert!(!tx.send_if_modified(|_| false), "unmodified: no wake");
        tx.send_replace(Some(7));
        assert_eq!(waiter.await.expect("join"), Ok(Some(7)));
    }

    #[tokio::test]
    async fn a_dropped_sender_closes_after_its_last_value_is_seen() {
        let (tx, mut rx) = channel(1u8);
        let mut second = tx.subscribe();
        tx.send_replace(2);
        drop(tx);
        assert_eq!(rx.changed().await, Ok(()), "the last value is still new");
        assert_eq!(*rx.borrow(), 2);
        assert_eq!(rx.changed().await, Err(Closed));
        assert_eq!(second.wait_for(|v| *v == 3).await, Err(Closed));
        assert_eq!(second.clone().wait_for(|v| *v == 2).await, Ok(2));
    }

    #[tokio::test(start_paused = true)]
    async fn one_wait_on_a_group_sees_a_change_of_any_of_its_signals() {
        let group = Group::default();
        let (a, mut a_rx) = group.channel(0u8);
        let (b, b_rx) = a_rx.sibling("x");
        let mut woken = std::pin::pin!(group.notified());
        woken.as_mut().enable();
        b.send_replace("y");
        tokio::time::timeout(Duration::from_millis(20), woken)
            .await
            .expect("a sibling's change wakes the group's waiter");
        assert_eq!(b_rx.has_changed(), Ok(true));
        // A's receiver, woken by B's change, sees nothing new of its own and waits on.
        let waiting = tokio::time::timeout(Duration::from_millis(20), a_rx.changed()).await;
        assert!(waiting.is_err(), "B's change is not A's");
        a.send_replace(1);
        assert_eq!(a_rx.changed().await, Ok(()));
        // Another group's signal does not wake this one's waiter.
        let (_lone, lone_rx) = channel(0u8);
        let (c, c_rx) = lone_rx.sibling(0u8);
        let mut woken = std::pin::pin!(group.notified());
        woken.as_mut().enable();
        drop(c);
        assert_eq!(c_rx.has_changed(), Err(Closed));
        let quiet = tokio::time::timeout(Duration::from_millis(20), woken).await;
        assert!(quiet.is_err(), "another group's change does not wake it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscriber_waits_for_the_next_change_only() {
        let (tx, _rx) = channel(5u8);
        tx.send_replace(6);
        let mut late = tx.subscribe();
        let waiting = tokio::time::timeout(Duration::from_millis(20), late.changed()).await;
        assert!(
            waiting.is_err(),
            "the value it subscribed at is not a change"
        );
        tx.send_replace(7);
        late.changed().await.expect("open");
        assert_eq!(*late.borrow(), 7);
    }
}
