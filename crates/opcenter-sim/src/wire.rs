//! The client side of the wire contract (`shared/PROTOCOL.md` sections 1–3, 6): connect a
//! WebSocket, say `hello`, encode commands in the session's encoding, decode the frames
//! the simulator cares about, and mint tokens.
//!
//! Owns: framing and the typed view of incoming frames. Must never: use anything of the
//! server but its public protocol (no server crates, no shared memory).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use opcenter_proto::auth::{Claims, Role, mint_token};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

/// A client WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// The session encoding, fixed by the first frame the client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Text frames holding JSON.
    Json,
    /// Binary frames holding MessagePack maps with string keys.
    Msgpack,
}

impl Encoding {
    /// Encodes one command map as a frame of this encoding.
    pub fn encode(self, v: &Value) -> Message {
        match self {
            Encoding::Json => Message::text(v.to_string()),
            // A `Value` map has string keys and no extension types, which is exactly what
            // the contract asks of MessagePack frames; serialising it cannot fail.
            Encoding::Msgpack => Message::binary(rmp_serde::to_vec_named(v).expect("Value to msgpack")),
        }
    }
}

/// The payload bytes of a data frame, or `None` for control frames.
pub fn payload(msg: &Message) -> Option<&[u8]> {
    match msg {
        Message::Text(t) => Some(t.as_bytes()),
        Message::Binary(b) => Some(b),
        _ => None,
    }
}

/// Decodes a data frame of either encoding into `T`.
pub fn decode<T: for<'de> Deserialize<'de>>(msg: &Message) -> Option<T> {
    match msg {
        Message::Text(t) => serde_json::from_str(t.as_str()).ok(),
        Message::Binary(b) => rmp_serde::from_slice(b).ok(),
        _ => None,
    }
}

/// A location on the wire.
#[derive(Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq)]
pub struct Loc {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
}

/// The fields of an Incident the simulator reads.
#[derive(Debug, Clone, Deserialize)]
pub struct IncidentView {
    /// Server-made id.
    pub id: String,
    /// Idempotency key, if one was given.
    #[serde(default)]
    pub key: Option<String>,
    /// `pending`, `dispatched`, `en_route`, `on_scene`, `closed`.
    #[serde(default)]
    pub status: String,
    /// Where.
    pub location: Option<Loc>,
    /// Assigned units.
    #[serde(default)]
    pub units: Vec<String>,
    /// Free text (the load tool puts its send time here).
    #[serde(default)]
    pub description: Option<String>,
    /// Server creation time.
    #[serde(default)]
    pub created_ms: u64,
}

/// The fields of a Unit the simulator reads.
#[derive(Debug, Clone, Deserialize)]
pub struct UnitView {
    /// Unit id.
    pub id: String,
    /// Unit status.
    #[serde(default)]
    pub status: String,
}

/// One position on a `positions` frame.
#[derive(Debug, Clone, Deserialize)]
pub struct PosItem {
    /// Unit id.
    pub unit_id: String,
    /// Fix time.
    #[serde(default)]
    pub at_ms: u64,
}

/// The typed view of any incoming frame; absent fields are `None`.
#[derive(Debug, Clone, Deserialize)]
pub struct Frame {
    /// `ok`, `error`, `event`, `positions`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Reply correlation.
    #[serde(default)]
    pub id: Option<u64>,
    /// Error code.
    #[serde(default)]
    pub code: Option<String>,
    /// Error message.
    #[serde(default)]
    pub message: Option<String>,
    /// Event topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// Event change.
    #[serde(default)]
    pub change: Option<String>,
    /// Incident of an event or reply (null in a unit's hello reply without assignment).
    #[serde(default)]
    pub incident: Option<IncidentView>,
    /// Unit of an event or reply.
    #[serde(default)]
    pub unit: Option<UnitView>,
    /// Snapshot incidents of a subscribe reply.
    #[serde(default)]
    pub incidents: Option<Vec<IncidentView>>,
    /// Snapshot units of a subscribe reply.
    #[serde(default)]
    pub units: Option<Vec<UnitView>>,
    /// Positions batch.
    #[serde(default)]
    pub items: Option<Vec<PosItem>>,
    /// A subscribe reply's epoch.
    #[serde(default)]
    pub epoch: Option<String>,
    /// A subscribe reply's cut (or an event's seq).
    #[serde(default)]
    pub seq: Option<u64>,
}

/// A heading for the wire: whole degrees in [0, 360) (rounding 359.6 gives 0, not 360,
/// which the server rightly refuses).
pub fn heading(deg: f64) -> f64 {
    deg.round().rem_euclid(360.0)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    now_us() / 1000
}

/// Microseconds since the Unix epoch: the common clock of every simulated client on
/// this machine, so a time written into a frame by one can be read by another.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Token lifetime for simulated clients: long enough for any run.
const TOKEN_TTL_S: u64 = 7 * 24 * 3600;

/// A token for a non-unit role.
pub fn token(secret: &[u8], role: Role, sub: &str) -> String {
    mint_token(secret, &Claims::new(sub, role, now_ms() / 1000, TOKEN_TTL_S))
}

/// A unit's token with its callsign, kind and capabilities.
pub fn unit_token(secret: &[u8], unit: &str, callsign: &str, kind: &str, caps: &[&str]) -> String {
    let mut c = Claims::unit(unit, now_ms() / 1000, TOKEN_TTL_S);
    c.callsign = Some(callsign.to_owned());
    c.kind = Some(kind.to_owned());
    c.caps = Some(caps.iter().map(|s| s.to_string()).collect());
    mint_token(secret, &c)
}

/// Opens `ws://server/v1/ws` with Nagle off (latency is what we measure).
pub async fn open(server: &str) -> anyhow::Result<Ws> {
    let tcp = TcpStream::connect(server)
        .await
        .with_context(|| format!("connect {server}"))?;
    tcp.set_nodelay(true)?;
    let url = format!("ws://{server}/v1/ws");
    let (ws, _) = tokio_tungstenite::client_async(url, tcp)
        .await
        .context("websocket handshake")?;
    Ok(ws)
}

/// Waits for the reply to command `id`, skipping other frames; fails on `error`.
pub async fn await_reply(ws: &mut Ws, id: u64, within: Duration) -> anyhow::Result<(Frame, Message)> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("no reply to command {id}"))?
            .context("connection closed")??;
        if let Message::Close(c) = &msg {
            bail!("closed by server: {c:?}");
        }
        let Some(f) = decode::<Frame>(&msg) else { continue };
        if f.id == Some(id) && (f.ty == "ok" || f.ty == "error") {
            if f.ty == "error" {
                bail!(
                    "error {}: {}",
                    f.code.as_deref().unwrap_or("?"),
                    f.message.as_deref().unwrap_or("")
                );
            }
            return Ok((f, msg));
        }
    }
}

/// Connects and says hello (command id 1); returns the socket and the ok reply.
pub async fn connect(server: &str, token: &str, enc: Encoding) -> anyhow::Result<(Ws, Frame)> {
    let mut ws = open(server).await?;
    let hello = serde_json::json!({"type": "hello", "id": 1, "token": token, "protocol": 1});
    ws.send(enc.encode(&hello)).await?;
    let (ok, _) = await_reply(&mut ws, 1, Duration::from_secs(15))
        .await
        .context("hello")?;
    Ok((ws, ok))
}

/// The decimal number following `marker` in `bytes`, if any (used to read a send
/// time out of a frame without decoding it; works for JSON and MessagePack alike
/// because both carry strings as raw UTF-8).
pub fn number_after(bytes: &[u8], marker: &[u8]) -> Option<u64> {
    let at = find(bytes, marker)? + marker.len();
    let digits = bytes[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&bytes[at..at + digits]).ok()?.parse().ok()
}

/// First index of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let last_start = hay.len() - needle.len();
    let mut i = 0;
    while i <= last_start {
        match hay[i..=last_start].iter().position(|&b| b == first) {
            None => return None,
            Some(p) => {
                i += p;
                if &hay[i..i + needle.len()] == needle {
                    return Some(i);
                }
                i += 1;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_after_reads_json_and_msgpack() {
        let v =
            serde_json::json!({"type":"event","change":"created","incident":{"description":"load:12345"}});
        let j = v.to_string();
        assert_eq!(number_after(j.as_bytes(), b"load:"), Some(12345));
        let m = rmp_serde::to_vec_named(&v).unwrap();
        assert_eq!(number_after(&m, b"load:"), Some(12345));
        assert_eq!(number_after(b"nothing here", b"load:"), None);
        assert!(find(j.as_bytes(), br#""change":"created""#).is_some());
        assert!(find(&m, b"\xa6change\xa7created").is_some());
    }

    #[test]
    fn headings_stay_below_360() {
        assert_eq!(heading(359.6), 0.0);
        assert_eq!(heading(-0.4), 0.0);
        assert_eq!(heading(-10.0), 350.0);
        assert_eq!(heading(90.2), 90.0);
    }

    #[test]
    fn frames_decode_in_both_encodings() {
        let v = serde_json::json!({"type":"event","seq":3,"topic":"assignments","change":"assigned",
            "incident":{"id":"I-1","status":"dispatched","units":["P-1"],"location":{"lat":51.2,"lon":51.3},
            "created_ms":5,"extra":true}});
        for enc in [Encoding::Json, Encoding::Msgpack] {
            let f: Frame = decode(&enc.encode(&v)).unwrap();
            assert_eq!(f.ty, "event");
            let inc = f.incident.unwrap();
            assert_eq!(inc.units, vec!["P-1".to_string()]);
            assert_eq!(inc.location.unwrap().lat, 51.2);
        }
        let f: Frame = decode(&Message::text(r#"{"type":"ok","id":1,"incident":null}"#)).unwrap();
        assert!(f.incident.is_none());
    }
}
