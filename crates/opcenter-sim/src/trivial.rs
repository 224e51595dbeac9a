//! The trivial sender: the least a fan-out hub can do, to measure the ceiling of the
//! load tool's receiver (`opcenter sim --fanout`). It speaks the same small part of
//! the contract as `benches/node-ws-hub/hub.js` (`hello`, `subscribe`,
//! `incident.create` → `ok` + one `created` event to every `incidents` subscriber,
//! `ping`), verifies nothing, stores nothing, and sends each event as one frame
//! encoded once; everything queued in one turn of its single-threaded loop goes to
//! each subscriber in one `write(2)`. If the tool receives from this sender at several
//! times the rate either real hub manages, the tool is not what a fan-out run measures.
//!
//! Owns: that sender. Must never: listen on anything but the address it is given
//! (loopback in every script), or be mistaken for a server (JSON only, no auth).

use std::cell::RefCell;
use std::rc::Rc;

use anyhow::Context;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::rawws::{self, FrameReader, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};

type Writer = Rc<tokio::sync::Mutex<OwnedWriteHalf>>;

struct Hub {
    subscribers: RefCell<Vec<Writer>>,
    events: mpsc::UnboundedSender<Vec<u8>>,
    seq: std::cell::Cell<u64>,
}

/// Serves on `listener` until the process ends. Must run inside a
/// `tokio::task::LocalSet` on a current-thread runtime (one core, like Node).
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    let hub = Rc::new(Hub {
        subscribers: RefCell::new(Vec::new()),
        events: tx,
        seq: std::cell::Cell::new(0),
    });
    tokio::task::spawn_local(broadcast(hub.clone(), rx));
    loop {
        let (tcp, _) = listener.accept().await.context("accept")?;
        let hub = hub.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = connection(tcp, hub).await {
                tracing::debug!("trivial sender connection: {e:#}");
            }
        });
    }
}

/// Writes every queued event frame to every subscriber: one buffer, one write each.
async fn broadcast(hub: Rc<Hub>, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(first) = rx.recv().await {
        let mut batch = first;
        while let Ok(more) = rx.try_recv() {
            batch.extend_from_slice(&more);
        }
        let subs = hub.subscribers.borrow().clone();
        for w in subs {
            let _ = w.lock().await.write_all(&batch).await;
        }
    }
}

async fn reply(w: &Writer, v: &Value) -> std::io::Result<()> {
    let mut out = Vec::new();
    rawws::encode(OP_TEXT, v.to_string().as_bytes(), None, &mut out);
    w.lock().await.write_all(&out).await
}

async fn connection(mut tcp: TcpStream, hub: Rc<Hub>) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let left = rawws::server_handshake(&mut tcp).await?;
    let (mut rd, wr) = tcp.into_split();
    let w: Writer = Rc::new(tokio::sync::Mutex::new(wr));
    let mut r = FrameReader::new(64 * 1024, &left);
    loop {
        let mut commands = Vec::new();
        while let Some((h, p)) = r.next_frame()? {
            match h.opcode {
                OP_TEXT => commands.push(serde_json::from_slice::<Value>(p).unwrap_or(Value::Null)),
                OP_PING => {
                    let mut out = Vec::new();
                    rawws::encode(OP_PONG, p, None, &mut out);
                    w.lock().await.write_all(&out).await?;
                }
                OP_CLOSE => return Ok(()),
                _ => {}
            }
        }
        for m in commands {
            command(&hub, &w, m).await?;
        }
        if r.fill(&mut rd).await? == 0 {
            return Ok(());
        }
    }
}

async fn command(hub: &Hub, w: &Writer, m: Value) -> anyhow::Result<()> {
    let id = m.get("id").cloned().unwrap_or(Value::Null);
    let seq = hub.seq.get();
    match m.get("type").and_then(Value::as_str).unwrap_or("") {
        "hello" => {
            let ok = json!({"type": "ok", "id": id, "session": "t", "role": "dispatcher", "epoch": "trivial", "seq": seq});
            reply(w, &ok).await?;
        }
        "subscribe" => {
            let wants = m["topics"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t == "incidents"));
            if wants {
                hub.subscribers.borrow_mut().push(w.clone());
            }
            let ok = json!({"type": "ok", "id": id, "epoch": "trivial", "seq": seq, "recovered": false,
                "incidents": [], "units": []});
            reply(w, &ok).await?;
        }
        "incident.create" => {
            let seq = seq + 1;
            hub.seq.set(seq);
            let now = crate::wire::now_ms();
            // The same fields as the Node peer's event (so about the same size).
            let incident = json!({"id": format!("T{seq}"), "key": m["key"], "category": m["category"],
                "priority": m["priority"], "status": "pending", "location": m["location"],
                "description": m["description"], "source": "call", "units": [], "required": [],
                "units_needed": 1, "notes": [], "possible_duplicates": [], "created_ms": now, "updated_ms": now});
            if !id.is_null() {
                reply(w, &json!({"type": "ok", "id": id, "incident": incident})).await?;
            }
            let ev = json!({"type": "event", "seq": seq, "topic": "incidents", "change": "created", "incident": incident});
            let mut frame = Vec::new();
            rawws::encode(OP_TEXT, ev.to_string().as_bytes(), None, &mut frame);
            // The receiver only ends with the process.
            let _ = hub.events.send(frame);
        }
        "ping" if !id.is_null() => reply(w, &json!({"type": "ok", "id": id})).await?,
        _ => {}
    }
    Ok(())
}
