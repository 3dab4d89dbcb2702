//! streamkeeper's platform emulator: a real HTTP + WebSocket server on one port that speaks
//! the `generic` dialect, Genesys Cloud CX's Notifications API, and NICE CXone's digital event
//! hub (DFO) and Agent Assist Hub (AAH) notifications, optionally over TLS with a test CA, and
//! takes faults on demand, for the demo, the end-to-end tests and the benchmarks.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::time::Duration;
//! use streamkeeper_emulator::{Emulator, EmulatorConfig, Fault};
//! let emu = Emulator::start(EmulatorConfig {
//!     streams: vec!["queue-events".into()],
//!     event_interval: Duration::from_millis(200),
//!     ..EmulatorConfig::default()
//! })
//! .await?;
//! // Point a sidecar at emu.base_url() (token, users/me) and emu.stream_url("queue-events").
//! emu.fault(Fault::Blackhole { stream: Some("queue-events".into()) });
//! emu.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Every dialect is served on the one port; paths keep them apart. Genesys and the generic
//! dialect share `POST /oauth/token`: the credentials decide which platform a token belongs to
//! (a Genesys client id from [`GenesysConfig::clients`], or the generic
//! [`EmulatorConfig::client_id`]). A Genesys token is refused by the other platforms' endpoints
//! and vice versa (401), except `GET /api/v2/tokens/me`, which answers for any live token.
//! `{base}` below is `http://HOST:PORT` (`https://` with TLS); the API host and the login host
//! of a platform are both `{base}`.
//!
//! # Wire contract: the `generic` dialect
//! * `POST /oauth/token`, `Authorization: Basic base64(id:secret)`, form
//!   `grant_type=client_credentials` → 200
//!   `{"access_token":T,"token_type":"bearer","expires_in":SECS}`; else 401
//!   `{"error":"invalid_client"}`.
//! * `GET /api/v2/users/me`, `Authorization: Bearer T` → 200
//!   `{"id":"emulated-user","name":"Emulated User"}` while T is issued and unexpired; else 401.
//! * `GET /streams/{name}` WebSocket upgrade (the name is everything after `/streams/`, taken
//!   as is) with `Authorization: Bearer T`; else a plain 401. An unknown name creates the
//!   stream. `Last-Event-ID: ID` replays every retained event after ID, then live ones; an
//!   unknown or too-old ID replays all retained history; no header means live events only.
//! * Server → client text frames: events
//!   `{"type":"event","id":"<name>:<seq, 9 digits>","data":{"seq":N,"stream":"<name>","at":<epoch ms>}}`
//!   (sequence numbers start at 1 and never repeat), `{"type":"token-refresh-ack"}`,
//!   `{"type":"token-refresh-nack","reason":"invalid_token"}`.
//! * Client → server: `{"type":"token-refresh","token":T2}` (a valid T2 becomes the socket's
//!   token); pings are answered with pongs carrying the same payload. Anything else is logged
//!   and ignored; a frame that breaks RFC 6455 (unmasked, reserved bits, bad control frame)
//!   closes with 1002, invalid UTF-8 text with 1007, a message over `max_frame` with 1009.
//! * When the socket's token expires the server closes with 4001 `token expired`; at
//!   shutdown with 1001.
//!
//! # Wire contract: `genesys` (the Notifications API)
//! Errors have the platform's shape
//! `{"message":M,"code":C,"status":N,"contextId":ID,"details":[],"errors":[]}`.
//! * `POST /oauth/token`, Basic `base64(clientId:clientSecret)` of a configured Genesys client,
//!   form `grant_type=client_credentials` → 200
//!   `{"access_token":T,"token_type":"bearer","expires_in":SECS}` (SECS =
//!   [`GenesysConfig::token_ttl`], default 86,400); wrong credentials or grant, or an armed
//!   `refuse-token` fault → 401 `{"error":"invalid_client"}`. Every client
//!   id is its own OAuth client: its own tokens, channels and 20-channel limit.
//! * `GET /api/v2/tokens/me`, Bearer → 200
//!   `{"name":..,"homeOrganization":{"id":..},"OAuthClient":{"id":CLIENT_ID,"name":..},"authorizedScope":[..],"expiresIn":SECS}`
//!   for a live token; 401 `bad.credentials` otherwise.
//! * `GET /api/v2/users/me` with a Genesys (client-credentials) token → 403
//!   `not.authorized.no.user` (as the real one); generic tokens keep their 200.
//! * `POST /api/v2/notifications/channels`, Bearer → 200
//!   `{"connectUri":"ws://HOST:PORT/channels/{id}","id":"streaming-0-<26 a-z0-9>","expires":"<ISO 8601 UTC, ms>"}`
//!   (`wss://` with TLS). The channel is bound to the token that created it and to that
//!   token's client. A client's 21st live channel replaces its oldest one that has no socket
//!   (else its oldest one): that channel stops (below).
//! * `GET /api/v2/notifications/channels` → `{"entities":[{"connectUri","id","expires"}, ...]}`,
//!   the live channels of the token's client.
//! * `HEAD /api/v2/notifications/channels/{id}` → 200 while the channel is live, else 404
//!   (no body).
//! * `/api/v2/notifications/channels/{id}/subscriptions`, Bearer of the channel's client:
//!   `GET` → 200 `{"entities":[{"id":TOPIC}, ...]}`; `PUT` body `[{"id":TOPIC}, ...]` replaces
//!   the topics, `POST` (same body) adds to them, both → 200 with the resulting entities;
//!   `DELETE` removes them all → 204. A subscribing call (PUT, POST, or subscribe on the
//!   socket) extends the channel's life to a full [`GenesysConfig::channel_ttl`] (24 h by
//!   default) from now. A body that is not a JSON array of `{"id": string}` → 400
//!   `bad.request`; a topic that is empty, over 200 characters or not starting with `v2.` →
//!   400 `bad.request`; more than [`GenesysConfig::max_topics`] (1,000) topics on the channel →
//!   400 `{"message":"The channel would have N topics; a channel allows at most 1000.","code":"bad.request","status":400,...}`
//!   and nothing changes. An unknown, stopped, or other client's channel → 404 `not.found`.
//! * Any Genesys REST call: no or unknown token (a generic or CXone one too) → 401
//!   `bad.credentials`; an expired token →
//!   401 `bad.credentials`; an armed `rate-limit` fault → 429
//!   `{"message":"Rate limit exceeded the maximum [300] requests within [60] seconds. Retry the request in [N] seconds","code":"too.many.requests.retry.after","status":429,...}`
//!   with `Retry-After: N`.
//! * Socket: `GET /channels/{id}` upgrade, **no** auth header (one is ignored). An unknown or
//!   stopped channel → 404 before the upgrade. One socket per channel: a new connection takes
//!   the channel and the previous socket is closed with 1000 `connected elsewhere`.
//! * Server → client text frames:
//!   - events `{"topicName":TOPIC,"version":"2","eventBody":{"seq":N,"topic":TOPIC,"at":MS},"metadata":{"CorrelationId":UUID}}`,
//!     one per event of each subscribed topic. Each topic has its own sequence (from 1) and
//!     produces one event every [`GenesysConfig::event_interval`] from the moment it is first
//!     subscribed (or configured in [`GenesysConfig::topics`]), whether or not anyone is
//!     connected. An event goes to every channel subscribed to its topic whose socket is
//!     connected at that moment, with the same body and CorrelationId on each; a channel
//!     without a socket loses it. Nothing is ever replayed.
//!   - heartbeats `{"topicName":"channel.metadata","eventBody":{"message":"WebSocket Heartbeat"}}`
//!     every [`GenesysConfig::heartbeat_interval`] (30 s) from the connect on.
//!   - `{"topicName":"channel.metadata","eventBody":{"message":"pong"}}` for each client
//!     `{"message":"ping"}` (pong faults apply to it as to RFC 6455 pongs).
//!   - `{"result":"200","status":"subscribed"}` (plus `"correlationId"` echoed when sent) for
//!     `{"message":"subscribe","topics":[TOPIC, ...],"correlationId":C}`, which adds the topics
//!     and extends the channel; `{"message":"unsubscribe","topics":[...]}` is answered
//!     `{"result":"200","status":"unsubscribed"}`. A stopped channel answers `"result":"404"`,
//!     a topic limit or bad topic `"result":"400"` with a `"message"`.
//!   - `{"topicName":"v2.system.socket_closing","version":"2","eventBody":{"message":"The WebSocket connection will close soon"},"metadata":{"CorrelationId":UUID}}`
//!     (fault only), then after `closeAfterMs` a close (1001 unless the fault says otherwise).
//! * A channel stops when it reaches its expiry, when the token it was created with expires
//!   or is revoked, when it is replaced by a 21st channel, or by the `expire-channel` fault.
//!   A stopped channel gets 404 everywhere, receives no events, and its socket is closed with
//!   1000 and reason `channel expired`, `token expired` or `channel replaced` (after
//!   [`GenesysConfig::stop_grace`], zero by default, during which it is silent and answers
//!   socket subscribes with `"result":"404"`).
//!
//! # Wire contract: NICE CXone authentication (shared by `cxone-dfo` and `cxone-aah`)
//! * `GET /.well-known/openid-configuration` →
//!   `{"issuer":"{base}","token_endpoint":"{base}/auth/token","userinfo_endpoint":"{base}/auth/userinfo","authorization_endpoint":..,"jwks_uri":..,"grant_types_supported":[..],...}`
//!   (`{base}` from the request's Host header).
//! * `POST /authentication/v1/token/access-key`, JSON `{"accessKeyId":ID,"accessKeySecret":S}`
//!   of a configured key ([`CxoneConfig::access_keys`]) → 200
//!   `{"access_token":T,"token_type":"Bearer","expires_in":SECS,"refresh_token":R,"refresh_token_expires_in":SECS2,"id_token":..}`
//!   (SECS = [`CxoneConfig::token_ttl`], default 3,600); wrong key → 401
//!   `{"error":"invalid_client","error_description":".."}`; malformed JSON → 400
//!   `{"error":"invalid_request",..}`.
//! * `POST /auth/token`, form `grant_type=refresh_token&refresh_token=R` → 200, the same shape
//!   with a new access token and a new refresh token; R is used up (a refresh token works
//!   once). An unknown, used, expired or revoked R, or an armed `refuse-token` fault for
//!   refresh grants → 400 `{"error":"invalid_grant","error_description":".."}`. Another
//!   `grant_type` → 400 `unsupported_grant_type`.
//! * `GET /auth/userinfo`, Bearer → 200 `{"sub":..,"tenantId":..,"name":..}` for a live CXone
//!   access token, else 401 `{"error":"invalid_token"}` with `WWW-Authenticate`.
//! * A `rate-limit` fault on a CXone path → 429
//!   `{"error":"rate_limit_exceeded","error_description":"Retry in N seconds"}` with
//!   `Retry-After: N`.
//!
//! # Wire contract: `cxone-dfo` (the digital event hub)
//! * Socket: `GET /eventhub?tenantId=T&userId=U` upgrade, no auth header; without both
//!   parameters → 400. The stream of a socket is `T/U`.
//! * Client → server: `{"action":"register","payload":{"token":ACCESS_TOKEN}}` → server
//!   `{"eventType":"authorized","data":{"tenantId":T,"userId":U,"expiresIn":SECS}}` for a live
//!   CXone access token, else `{"eventType":"unauthorized","data":{"message":".."}}` (a failed
//!   register leaves an earlier successful one in force). Registering again with a new token on
//!   the same socket is the rotation: the new token's expiry takes over. Events flow only while
//!   registered.
//! * `{"action":"heartbeat"}` → `{"eventType":"pong"}` (pong faults apply).
//! * Events: `{"eventId":UUID,"eventType":"CaseStatusChanged","createdAt":"<ISO 8601>","data":{"seq":N,"stream":"T/U","at":MS}}`,
//!   one every [`CxoneConfig::event_interval`] per stream from its first register on, to every
//!   socket registered on it at that moment; not durable, no replay. A frame with an `eventId`
//!   is an event; every other server frame is a control message.
//! * When the registered token expires (no re-register in time), or is revoked, the server
//!   sends `{"eventType":"unauthorized","data":{"message":"token expired"}}` and closes with
//!   1008 `token expired`.
//! * `RATE_LIMIT_EXCEEDED` (fault): `{"eventType":"RATE_LIMIT_EXCEEDED","data":{"message":"Rate limit exceeded"}}`,
//!   then (unless the fault says `"close":false`) a close with 1013 `rate limit exceeded`.
//!   Unknown actions → `{"eventType":"error","data":{"message":".."}}`.
//!
//! # Wire contract: `cxone-aah` (Agent Assist Hub notifications)
//! * Socket: `GET /agent-assist-notifications/notifications/ws` upgrade, no auth header.
//! * Every client message is `{"command":C,"headers":{"sessionToken":T},"body":{..}}` and the
//!   server checks T on **every** one: a missing, unknown or expired T (or a revoked one) →
//!   `{"command":"ERROR","headers":{"connectionId":ID},"body":{"code":"UNAUTHORIZED","message":"..","command":C}}`
//!   and the message is not acted on. The emulator records, per socket, which token each
//!   inbound message carried ([`AahSocketStats::messages`]: the token's serial, see
//!   [`Emulator::token_serial`], never the token itself).
//! * `CONNECT` → `{"command":"CONNECTED","headers":{"connectionId":ID},"body":{}}`;
//!   `HEARTBEAT` → `{"command":"HEARTBEAT_ACK","headers":{"connectionId":ID},"body":{}}` (pong
//!   faults apply); `SUBSCRIBE` with `"body":{"topic":CONTACT_ID}` →
//!   `{"command":"SUBSCRIBED","headers":{"connectionId":ID},"body":{"topic":CONTACT_ID}}`;
//!   `UNSUBSCRIBE` → `UNSUBSCRIBED`, same shape. SUBSCRIBE or UNSUBSCRIBE before CONNECT →
//!   ERROR `NOT_CONNECTED`; an unknown command → ERROR `UNKNOWN_COMMAND`; not JSON → ERROR
//!   `BAD_REQUEST`.
//! * Events: `{"command":"MESSAGE","headers":{"topic":CONTACT_ID,"messageId":UUID},"body":{"seq":N,"topic":CONTACT_ID,"at":MS}}`
//!   (no `messageId` when [`CxoneConfig::aah_message_ids`] is off), one every
//!   [`CxoneConfig::event_interval`] per contact id from its first SUBSCRIBE on, to every socket
//!   subscribed at that moment; no replay.
//! * A `close` fault on an AAH socket first sends `{"command":"CLOSED","headers":{..},"body":{"reason":..}}`.
//!
//! # TLS
//! With [`EmulatorConfig::tls`] the emulator makes a test CA at start (rcgen) and a server
//! certificate for `localhost`, `127.0.0.1` and `::1` signed by it; [`Emulator::ca_pem`] has the
//! CA certificate (PEM), also written to [`TlsConfig::ca_pem_path`] when set. Connections whose
//! first byte is a TLS handshake get TLS (`https://`, `wss://`), others plain HTTP, on the same
//! port; [`Emulator::base_url`] and the socket URLs say `https`/`wss`. With
//! [`TlsConfig::untrusted`] the server certificate is signed by a different CA than the one
//! exposed, so a client trusting only [`Emulator::ca_pem`] must refuse it.
//!
//! # Rust API for tests
//! [`Emulator::base_url`] (every platform's API and login base), [`Emulator::stream_url`],
//! [`Emulator::dfo_url`], [`Emulator::aah_url`], [`Emulator::ca_pem`];
//! [`Emulator::emit`], [`Emulator::emit_genesys`], [`Emulator::emit_dfo`],
//! [`Emulator::emit_aah`] produce events now; [`Emulator::stats`], [`Emulator::fault`] and
//! [`Emulator::token_serial`] (to match a token you hold with the serials stats show).
//!
//! # Control endpoints
//! `POST /faults` with a [`Fault`] as JSON → 200 [`FaultReport`], or 400
//! `{"error":"bad fault: ..."}` naming the problem; `GET /stats` → [`Stats`];
//! `GET /healthz` → 200. Faults are per platform: the original actions (`blackhole`, `reset`,
//! ...) act on the sockets of every platform (`stream` names a generic stream), and
//! `{"action":"genesys"|"cxone-dfo"|"cxone-aah"|"cxone","fault":..}` ([`GenesysFault`],
//! [`DfoFault`], [`AahFault`], [`CxoneFault`]) target one platform's sockets (by channel,
//! client, stream or socket), channels and tokens:
//!
//! | `action` | `fault` | targets (all optional; none = all of that platform) | other fields |
//! |---|---|---|---|
//! | `genesys` | `reset`, `blackhole`, `heal`, `stop-pongs` | `channel`, `client` | |
//! | `genesys` | `delay-pongs` | `channel`, `client` | `delayMs` |
//! | `genesys` | `close` | `channel`, `client` | `code`, `reason` |
//! | `genesys` | `send-garbage` | `channel`, `client` | `kind`, `bytes` |
//! | `genesys` | `socket-closing` | `channel`, `client` | `closeAfterMs` (60,000), `code` (1001) |
//! | `genesys` | `expire-channel` | `channel`, `client` | |
//! | `genesys` | `expire-token`, `revoke-token` | `client`, `token` | |
//! | `genesys` | `refuse-token` (401 at `/oauth/token`) | `client` | `count` |
//! | `genesys` | `rate-limit` (429 on REST paths starting with `path`) | `path`, `method` | `count`, `retryAfterSecs` |
//! | `cxone-dfo` | `reset`, `blackhole`, `heal`, `stop-pongs`, `delay-pongs`, `close`, `send-garbage` | `tenantId`, `userId` | as above |
//! | `cxone-dfo` | `rate-limit-exceeded` (now, and for the next `count` registers) | `tenantId`, `userId` | `count` (0), `close` (true) |
//! | `cxone-aah` | `reset`, `blackhole`, `heal`, `stop-pongs`, `delay-pongs`, `close`, `send-garbage` | `socket` (id), `topic` | as above |
//! | `cxone` | `expire-token` (the access token expires now), `revoke-token` (and its refresh token) | `client` (access key id), `token` | |
//! | `cxone` | `refuse-token` | `client` | `grant` (`access-key`, `refresh-token`, `any`), `count` |
//! | `cxone` | `rate-limit` | `path`, `method` | `count`, `retryAfterSecs` |
//!
//! A report (`{"applied":N,"hit":[..]}`) names the sockets, channels or tokens a platform
//! fault hit, and counts them plus the requests armed; the original actions report the count only.
//!
//! The `blackhole` fault stops the emulator's own reading and writing: the kernel still
//! acknowledges TCP segments, so it models a hung peer application. A network-level half-open
//! peer (no ACKs at all) needs a blackholing proxy or network namespace.

mod auth;
mod config;
mod cxone;
mod emulator;
mod fault;
mod feed;
mod frame;
mod generic;
mod genesys;
mod http;
mod socket;
mod state;
mod stats;
mod stream;
mod tls;
mod tokens;
mod transport;
mod util;

pub use config::{Credential, CxoneConfig, EmulatorConfig, GenesysConfig, TlsConfig};
pub use emulator::Emulator;
pub use fault::{
    AahFault, CxoneFault, DfoFault, Fault, FaultReport, GarbageKind, GenesysFault, GrantKind,
};
pub use stats::{
    AahMessage, AahSocketStats, AahStats, ChannelStats, ClientTokenStats, DfoStats, FeedStats,
    GenesysClientStats, GenesysStats, Stats, StreamStats,
};
