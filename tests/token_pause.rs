//! While no valid token is held, forwarding pauses (`paused`, reason `token_mismatch`) and it
//! resumes without loss when one is: the token endpoint refuses every refresh until the
//! socket's token expires, then comes back.

use std::{collections::BTreeMap, time::Duration};

use streamkeeper_api::{app_protocol::AppFrame, config::TokenSpec};
use streamkeeper_e2e::{AckMode, App, FromServer, Harness, Options, event_seq};
use streamkeeper_emulator::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_valid_token_pauses_forwarding_and_a_new_one_resumes_it_without_loss() {
    let opts = Options {
        // Tokens live 2 s and are refreshed 1 s before they expire.
        token_ttl: Duration::from_secs(2),
        token: TokenSpec {
            refresh_lead: Duration::from_secs(1),
            retry: Duration::from_millis(200),
        },
        ..Options::new(&["tokens"])
    };
    let h = Harness::start(opts).await;
    let id = h.stream_id("tokens");
    h.wait_active(&id).await;
    let mut app = App::connect(h.app_addr, &id, AckMode::All).await;
    app.next_event(Duration::from_secs(3)).await;

    // Every refresh from now on is refused: the socket's token runs out.
    h.emu.fault(Fault::RefuseToken {
        stream: None,
        count: 1_000_000,
    });
    let mut seqs: BTreeMap<u64, u32> = BTreeMap::new();
    let mut seen_paused = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    while !seen_paused {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match app.try_recv(left).await {
            Some(FromServer::Frame(AppFrame::Event { id, .. })) => {
                *seqs.entry(event_seq(&id)).or_default() += 1
            }
            Some(FromServer::Frame(AppFrame::Paused { reason, .. })) => {
                assert_eq!(reason, "token_mismatch");
                seen_paused = true;
            }
            Some(FromServer::Frame(_)) => {}
            other => panic!("expected `paused` within 6 s of refusing refreshes, got {other:?}"),
        }
    }
    // Paused: nothing is forwarded until a token is valid again.
    let quiet = tokio::time::Instant::now() + Duration::from_millis(800);
    while let Some(seen) = app
        .try_recv(quiet.saturating_duration_since(tokio::time::Instant::now()))
        .await
    {
        if let FromServer::Frame(AppFrame::Event { id, .. }) = &seen {
            panic!("event {id} forwarded while no valid token was held");
        }
    }

    // The identity provider comes back: a token is had, forwarding resumes from where it was.
    h.emu.fault(Fault::Heal { stream: None });
    let mut resumed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut after_resume = 0;
    while after_resume < 20 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match app.try_recv(left).await {
            Some(FromServer::Frame(AppFrame::Resumed { .. })) => resumed = true,
            Some(FromServer::Frame(AppFrame::Event { id, .. })) => {
                *seqs.entry(event_seq(&id)).or_default() += 1;
                if resumed {
                    after_resume += 1;
                }
            }
            Some(FromServer::Frame(_)) => {}
            other => panic!("expected `resumed` and events within 8 s of healing, got {other:?}"),
        }
    }
    let (first, last) = (
        *seqs.keys().next().expect("events"),
        *seqs.keys().last().expect("events"),
    );
    let missing: Vec<u64> = (first..=last).filter(|s| !seqs.contains_key(s)).collect();
    assert!(
        missing.is_empty(),
        "events lost across the pause: {missing:?}"
    );
    let twice: Vec<u64> = seqs
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(twice.is_empty(), "events delivered twice: {twice:?}");
    h.shutdown().await;
}
