//! The audit hash chain on a region's stream, against a real nats-server: a clean
//! walk with checkpoints, a second writer continuing the chain through its takeover
//! marker, and forged copies of a stream (a flipped record byte, a changed header, a
//! removed message, a re-chained tail) named by `verify_region` and refused by an
//! engine's open unless `accept_broken_chain`; pipelined batches chained in submit
//! order, and refused ones rolled back with the chain.

use async_nats::HeaderMap;
use bytes::Bytes;
use opcenter_cluster::testing::{NatsCluster, runtime};
use opcenter_cluster::{
    CHAIN_HEADER, CHAIN_PREV_HEADER, ClusterError, FIRST_SEQ_HEADER, JetStreamJournal, JournalOptions,
    RegionVerified, TAKEOVER_HEADER,
};
use opcenter_store::{Checkpoint, GENESIS, Hash, Journal, hex, link};

fn verify(rt: &tokio::runtime::Runtime, urls: &str, region: &str) -> RegionVerified {
    rt.block_on(async {
        let client = opcenter_cluster::connect(urls).await.unwrap();
        opcenter_cluster::verify_region(client, region).await.unwrap()
    })
}

/// The chain computed here, independently, over the records read back.
fn recompute(j: &dyn Journal) -> Hash {
    j.read_from(0, usize::MAX)
        .unwrap()
        .iter()
        .fold(GENESIS, |h, r| link(&h, r.seq, &r.payload))
}

/// Writes `batches` of two records each to `region` with a checkpoint every 4.
fn fill(urls: &str, region: &str, batches: u64) -> JetStreamJournal {
    let mut opts = JournalOptions::new(region);
    opts.checkpoint_records = 4;
    let mut j = JetStreamJournal::connect(urls, opts).unwrap();
    for i in 0..batches {
        let a = format!("record {}", 2 * i + 1);
        let b = format!("record {}", 2 * i + 2);
        j.append_batch(&[a.as_bytes(), b.as_bytes()]).unwrap();
    }
    j
}

/// One stored message: headers and payload.
type Msg = (HeaderMap, Bytes);

fn messages(rt: &tokio::runtime::Runtime, urls: &str, region: &str) -> Vec<Msg> {
    rt.block_on(async {
        let client = opcenter_cluster::connect(urls).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(format!("OPC_{region}")).await.unwrap();
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for s in 1..=last {
            let m = stream.get_raw_message(s).await.unwrap();
            out.push((m.headers, m.payload));
        }
        out
    })
}

/// A new region `dst` holding `msgs` exactly (what someone with stream admin rights
/// can do: delete the stream and publish a forged history).
fn forge(rt: &tokio::runtime::Runtime, urls: &str, dst: &str, msgs: &[Msg]) {
    let mut opts = JournalOptions::new(dst);
    opts.verify_chain = false;
    drop(JetStreamJournal::connect(urls, opts).unwrap());
    rt.block_on(async {
        let client = opcenter_cluster::connect(urls).await.unwrap();
        let js = async_nats::jetstream::new(client);
        for (h, p) in msgs {
            let mut headers = HeaderMap::new();
            for name in [FIRST_SEQ_HEADER, CHAIN_PREV_HEADER, CHAIN_HEADER, TAKEOVER_HEADER] {
                if let Some(v) = h.get(name) {
                    headers.insert(name, v.as_str());
                }
            }
            js.publish_with_headers(format!("journal.{dst}"), headers, p.clone())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });
}

/// `(stored hash, record)` of a message payload (`[len u32][h 32][bytes]` each).
fn records(payload: &[u8]) -> Vec<(Hash, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        out.push((rest[4..36].try_into().unwrap(), rest[36..36 + len].to_vec()));
        rest = &rest[36 + len..];
    }
    out
}

fn payload(recs: &[(Hash, Vec<u8>)]) -> Bytes {
    let mut out = Vec::new();
    for (h, r) in recs {
        out.extend_from_slice(&(r.len() as u32).to_le_bytes());
        out.extend_from_slice(h);
        out.extend_from_slice(r);
    }
    out.into()
}

fn first_break(v: &RegionVerified) -> (u64, String) {
    let b = v.walk.breaks.first().expect("a break");
    (b.seq, b.reason.clone())
}

/// A server with region `src` of 5 messages (10 records), and those messages.
fn source() -> Option<(NatsCluster, String, tokio::runtime::Runtime, Vec<Msg>)> {
    let nats = NatsCluster::start_or_skip(1)?;
    let urls = nats.urls();
    let rt = runtime();
    drop(fill(&urls, "src", 5));
    let msgs = messages(&rt, &urls, "src");
    Some((nats, urls, rt, msgs))
}

#[test]
fn the_chain_holds_is_checkpointed_and_continues_through_a_takeover() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let urls = nats.urls();
    let rt = runtime();
    let mut a = fill(&urls, "zko", 5);
    assert_eq!(a.last_seq(), 10);
    assert_eq!(
        a.chain_head(),
        recompute(&a),
        "the stored chain is SHA-256 over the records"
    );

    let v = verify(&rt, &urls, "zko");
    assert!(v.walk.breaks.is_empty(), "{:?}", v.walk.breaks);
    assert_eq!((v.walk.first_seq, v.walk.last_seq), (1, 10));
    assert_eq!(v.walk.base, Some(GENESIS));
    assert_eq!(v.walk.head, a.chain_head());
    // A checkpoint every 4 records, each put after its batch: at 4 and 8.
    assert_eq!(v.checkpoints, 2);
    assert_eq!(v.walk.checkpoints_checked, 2);
    let newest = v.newest_checkpoint.unwrap();
    assert_eq!(newest.seq, 8);
    let head = rt.block_on(async {
        let client = opcenter_cluster::connect(&urls).await.unwrap();
        opcenter_cluster::region_head(client, "zko").await.unwrap()
    });
    assert_eq!(head, Some(newest));

    // A second writer opens (walking the chain), appends its takeover marker and
    // continues from the hash it replayed; the first writer is fenced.
    let mut b = JetStreamJournal::connect(&urls, JournalOptions::new("zko")).unwrap();
    assert_eq!(b.chain_head(), a.chain_head());
    b.append_takeover("node-b 2").unwrap();
    assert_eq!(b.append_batch(&[b"after takeover"]).unwrap(), 11..=11);
    assert!(a.append_batch(&[b"stale"]).is_err(), "the old writer is fenced");
    let v = verify(&rt, &urls, "zko");
    assert!(v.walk.breaks.is_empty(), "{:?}", v.walk.breaks);
    assert_eq!(v.walk.takeovers, 1);
    assert_eq!(v.walk.last_seq, 11);
    assert_eq!(
        v.walk.head,
        recompute(&b),
        "one chain from record 1 through the failover"
    );
    assert_eq!(v.walk.head, b.chain_head());

    // The fenced writer re-reads the end (walking only what is new) and agrees.
    a.reopen().unwrap();
    assert_eq!(a.chain_head(), b.chain_head());
}

#[test]
fn a_flipped_byte_a_changed_header_or_a_missing_message_is_named() {
    let Some((_nats, urls, rt, msgs)) = source() else {
        return;
    };
    assert_eq!(msgs.len(), 5);

    // An exact copy verifies: the forging itself is not what is caught.
    forge(&rt, &urls, "copy", &msgs);
    assert!(verify(&rt, &urls, "copy").walk.breaks.is_empty());

    // One byte of record 6 (the second record of message 3) flipped.
    let mut flipped = msgs.clone();
    let mut recs = records(&flipped[2].1);
    assert_eq!(recs[1].1, b"record 6");
    recs[1].1[0] ^= 0x20;
    flipped[2].1 = payload(&recs);
    forge(&rt, &urls, "flipped", &flipped);
    let v = verify(&rt, &urls, "flipped");
    assert_eq!(v.walk.breaks.len(), 1, "named once: {:?}", v.walk.breaks);
    let (seq, why) = first_break(&v);
    assert_eq!(seq, 6);
    assert!(why.contains("was changed"), "{why}");
    assert_eq!(v.walk.breaks[0].stream_seq, 3);

    // An engine refuses to open it, naming that record...
    let refused = JetStreamJournal::connect(&urls, JournalOptions::new("flipped"));
    match refused {
        Err(e @ ClusterError::ChainBroken { .. }) => {
            let text = e.to_string();
            assert!(text.contains("seq 6 in stream message 3"), "{text}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("opened a broken chain"),
    }
    // ...unless told to: it then continues from the stored hashes, and the break
    // stays the only one.
    let mut opts = JournalOptions::new("flipped");
    opts.accept_broken_chain = true;
    let mut j = JetStreamJournal::connect(&urls, opts).unwrap();
    j.append_batch(&[b"later"]).unwrap();
    let v = verify(&rt, &urls, "flipped");
    assert_eq!(v.walk.breaks.len(), 1, "{:?}", v.walk.breaks);
    assert_eq!(v.walk.last_seq, 11);

    // The stored hash changed instead of the record: the next link does not hold.
    let mut hashed = msgs.clone();
    let mut recs = records(&hashed[1].1);
    recs[0].0[0] ^= 1;
    hashed[1].1 = payload(&recs);
    forge(&rt, &urls, "hashed", &hashed);
    let v = verify(&rt, &urls, "hashed");
    assert_eq!(first_break(&v).0, 3, "{:?}", v.walk.breaks);

    // A message's Opc-Chain-Prev header rewritten.
    let mut header = msgs.clone();
    header[3].0.insert(CHAIN_PREV_HEADER, hex(&[7; 32]).as_str());
    forge(&rt, &urls, "header", &header);
    let v = verify(&rt, &urls, "header");
    assert_eq!(first_break(&v).0, 7, "{:?}", v.walk.breaks);

    // Message 2 (records 3 and 4) left out.
    let mut missing = msgs.clone();
    missing.remove(1);
    forge(&rt, &urls, "missing", &missing);
    let v = verify(&rt, &urls, "missing");
    let (seq, why) = first_break(&v);
    assert_eq!(seq, 5);
    assert!(why.contains("records 3..=4 are missing"), "{why}");
}

#[test]
fn a_rechained_tail_disagrees_with_the_checkpoint() {
    let Some((_nats, urls, rt, msgs)) = source() else {
        return;
    };
    // Record 2 changed and every hash from there on recomputed: no link breaks.
    let mut h = GENESIS;
    let mut seq = 0;
    let forged: Vec<Msg> = msgs
        .iter()
        .map(|(headers, p)| {
            let mut headers = headers.clone();
            headers.insert(CHAIN_PREV_HEADER, hex(&h).as_str());
            let recs: Vec<(Hash, Vec<u8>)> = records(p)
                .into_iter()
                .map(|(_, mut r)| {
                    seq += 1;
                    if seq == 2 {
                        r = b"record 2, rewritten".to_vec();
                    }
                    h = link(&h, seq, &r);
                    (h, r)
                })
                .collect();
            headers.insert(CHAIN_HEADER, hex(&h).as_str());
            (headers, payload(&recs))
        })
        .collect();
    forge(&rt, &urls, "rechained", &forged);
    assert!(verify(&rt, &urls, "rechained").walk.breaks.is_empty());
    // The checkpoints the real writer published (seq 4 and 8), put into the forged
    // region's bucket, as an outside copy would be compared: both disagree.
    let cps = verify(&rt, &urls, "src");
    assert_eq!(cps.checkpoints, 2);
    rt.block_on(async {
        let client = opcenter_cluster::connect(&urls).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let kv =
            opcenter_cluster::open_kv_bucket(&js, "OPC_rechained_chain", 1, 64, std::time::Duration::ZERO)
                .await
                .unwrap();
        let src = js.get_key_value("OPC_src_chain").await.unwrap();
        let mut history = src.history("head").await.unwrap();
        use futures_util::StreamExt;
        while let Some(e) = history.next().await {
            kv.put("head", e.unwrap().value).await.unwrap();
        }
        // And one beyond the end: records cut off.
        let beyond = Checkpoint {
            seq: 99,
            hash: [1; 32],
            unix_ms: 1,
        };
        kv.put("head", beyond.line().trim_end().to_owned().into())
            .await
            .unwrap();
    });
    let v = verify(&rt, &urls, "rechained");
    let seqs: Vec<(u64, u64)> = v.walk.breaks.iter().map(|b| (b.seq, b.stream_seq)).collect();
    assert_eq!(seqs, vec![(4, 0), (8, 0), (99, 0)], "{:?}", v.walk.breaks);
    assert!(v.walk.breaks[0].reason.contains("re-chained"));
    assert!(v.walk.breaks[2].reason.contains("cut off"));
}

/// Batches in flight are chained in submit order: eight submitted back to back
/// (none waited for) walk clean and end at the hash computed over the records.
/// When batches in flight are refused (another writer appended first), the
/// chain head falls back with them to the last acknowledged record, and after
/// `reopen` the writer continues from the other writer's hash: one unbroken
/// chain, nothing of the refused batches in it.
#[test]
fn pipelined_batches_chain_in_submit_order_and_a_refused_one_rolls_the_chain_back() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let urls = nats.urls();
    let rt = runtime();
    let mut a = JetStreamJournal::connect(&urls, JournalOptions::new("zko")).unwrap();
    for i in 0..8u8 {
        a.submit(&[&[i], &[i, i]]).unwrap();
    }
    assert_eq!(a.wait_acked().unwrap(), 16);
    let acked = a.chain_head();
    assert_eq!(acked, recompute(&a), "chained in submit order");
    let v = verify(&rt, &urls, "zko");
    assert!(v.walk.breaks.is_empty(), "{:?}", v.walk.breaks);
    assert_eq!((v.walk.last_seq, v.walk.head), (16, acked));

    // Another writer appends behind a's back; three batches of a's go in flight
    // after it and are all refused.
    let mut b = JetStreamJournal::connect(&urls, JournalOptions::new("zko")).unwrap();
    assert_eq!(b.chain_head(), acked);
    b.append_batch(&[b"theirs"]).unwrap();
    for p in [&b"x"[..], b"y", b"z"] {
        a.submit(&[p]).unwrap();
    }
    assert!(matches!(a.wait_acked(), Err(ClusterError::Fenced { .. })));
    assert_eq!(a.last_seq(), 16);
    assert_eq!(
        a.chain_head(),
        acked,
        "the refused batches' hashes are not the chain's"
    );

    // Re-read: a continues from b's record, in flight again, and the chain holds.
    a.reopen().unwrap();
    assert_eq!(a.chain_head(), b.chain_head());
    a.submit(&[b"mine 1"]).unwrap();
    a.submit(&[b"mine 2", b"mine 3"]).unwrap();
    assert_eq!(a.wait_acked().unwrap(), 20);
    let v = verify(&rt, &urls, "zko");
    assert!(v.walk.breaks.is_empty(), "{:?}", v.walk.breaks);
    assert_eq!(v.walk.last_seq, 20);
    assert_eq!(v.walk.head, a.chain_head());
    assert_eq!(v.walk.head, recompute(&a), "one chain, without x, y, z");
    let tail: Vec<Vec<u8>> = a
        .read_from(16, 10)
        .unwrap()
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(
        tail,
        [&b"theirs"[..], b"mine 1", b"mine 2", b"mine 3"].map(|p| p.to_vec())
    );
}
