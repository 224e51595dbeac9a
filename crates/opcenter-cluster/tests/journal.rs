//! The JetStream journal against real nats-server processes on loopback: round trip,
//! continuity across reopen and server restart, fencing, idempotent retries,
//! pipelining, large snapshots, compaction, and an R3 stream losing its leader.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opcenter_cluster::testing::{NatsCluster, runtime};
use opcenter_cluster::{Follower, JetStreamJournal, JournalOptions};
use opcenter_store::{Journal, StoreError};

fn payloads(journal: &dyn Journal, from: u64) -> Vec<(u64, Vec<u8>)> {
    journal
        .read_from(from, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.seq, r.payload))
        .collect()
}

/// Stream message count, as the server reports it.
fn stream_messages(j: &JetStreamJournal) -> u64 {
    j.stream_info().unwrap().state.messages
}

/// The server leading the stream, as the cluster reports it.
fn stream_leader(j: &JetStreamJournal) -> Option<String> {
    j.stream_info().unwrap().cluster?.leader
}

#[test]
fn append_replay_and_reopen_keep_seqs_and_epoch() {
    let Some(mut nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let urls = nats.urls();
    let mut j = JetStreamJournal::connect(&urls, JournalOptions::new("zko")).unwrap();
    assert_eq!((j.first_seq(), j.last_seq()), (1, 0));
    assert_eq!(j.append_batch(&[b"a", b"b", b"c"]).unwrap(), 1..=3);
    assert_eq!(j.append_batch(&[b"d"]).unwrap(), 4..=4);
    let empty = j.append_batch(&[]).unwrap();
    assert!(empty.is_empty() && *empty.start() == 5);
    let all = payloads(&j, 0);
    assert_eq!(
        all,
        vec![
            (1, b"a".to_vec()),
            (2, b"b".to_vec()),
            (3, b"c".to_vec()),
            (4, b"d".to_vec())
        ]
    );
    // A read that starts and stops inside a batch.
    let mid: Vec<u64> = j.read_from(1, 1).unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(mid, vec![2]);
    assert!(j.read_from(4, 10).unwrap().is_empty());
    let epoch = j.epoch().to_owned();
    assert!(epoch.starts_with("OPC_zko@"), "{epoch}");
    drop(j);

    // Reopen: appends continue the seq, the epoch is the same.
    let mut j = JetStreamJournal::connect(&urls, JournalOptions::new("zko")).unwrap();
    assert_eq!((j.first_seq(), j.last_seq(), j.epoch()), (1, 4, epoch.as_str()));
    assert_eq!(j.append_batch(&[b"e", b"f"]).unwrap(), 5..=6);
    drop(j);

    // kill -9 the server and start it on the same store: all of it is still there.
    nats.kill(0).unwrap();
    nats.restart(0).unwrap();
    let j = JetStreamJournal::connect(&urls, JournalOptions::new("zko")).unwrap();
    assert_eq!((j.last_seq(), j.epoch()), (6, epoch.as_str()));
    assert_eq!(payloads(&j, 0).len(), 6);
    assert_eq!(payloads(&j, 4), vec![(5, b"e".to_vec()), (6, b"f".to_vec())]);

    // Another region is another stream with its own seqs.
    let mut other = JetStreamJournal::connect(&urls, JournalOptions::new("akt")).unwrap();
    assert_eq!(other.append_batch(&[b"x"]).unwrap(), 1..=1);
    assert_ne!(other.epoch(), epoch);
}

#[test]
fn a_second_writer_with_a_stale_sequence_is_fenced() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let rt = runtime();
    let client = rt.block_on(opcenter_cluster::connect(&nats.urls())).unwrap();
    let open =
        || JetStreamJournal::open(rt.handle().clone(), client.clone(), JournalOptions::new("zko")).unwrap();
    let mut first = open();
    first.append_batch(&[b"one"]).unwrap();
    let mut second = open(); // sees seq 1
    first.append_batch(&[b"two"]).unwrap();

    let err = second.append_batch(&[b"forked"]).unwrap_err();
    assert!(
        matches!(&err, StoreError::Fenced { reason } if reason.contains("another writer")),
        "{err}"
    );
    assert!(matches!(
        second.append_batch(&[b"again"]),
        Err(StoreError::Poisoned)
    ));

    // Reopened, the fenced writer sees where the stream really ends, and may go on.
    let fenced_at = second.last_seq();
    second.reopen().unwrap();
    assert_eq!((fenced_at, second.last_seq()), (1, 2));
    assert_eq!(payloads(&second, fenced_at), vec![(2, b"two".to_vec())]);

    // The log did not fork: the first writer's records only, and it goes on.
    assert_eq!(first.append_batch(&[b"three"]).unwrap(), 3..=3);
    let seen = payloads(&first, 0);
    assert_eq!(
        seen,
        vec![(1, b"one".to_vec()), (2, b"two".to_vec()), (3, b"three".to_vec())]
    );
    assert_eq!(stream_messages(&first), 3);
}

#[test]
fn a_takeover_message_fences_the_old_writer_and_moves_no_record_seq() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let rt = runtime();
    let client = rt.block_on(opcenter_cluster::connect(&nats.urls())).unwrap();
    let open =
        || JetStreamJournal::open(rt.handle().clone(), client.clone(), JournalOptions::new("zko")).unwrap();
    let mut old = open();
    old.append_batch(&[b"one", b"two"]).unwrap();
    let mut new = open();
    let marker_at = new.append_takeover("b 7").unwrap();
    assert_eq!(marker_at, 2);
    // The old writer (paused meanwhile) can append nothing more.
    let err = old.append_batch(&[b"stale"]).unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    // The new one goes on at the next record seq, and every reader skips the marker.
    assert_eq!(new.append_batch(&[b"three"]).unwrap(), 3..=3);
    let want = vec![(1, b"one".to_vec()), (2, b"two".to_vec()), (3, b"three".to_vec())];
    assert_eq!(payloads(&new, 0), want);
    let reopened = open();
    assert_eq!((reopened.first_seq(), reopened.last_seq()), (1, 3));
    assert_eq!(payloads(&reopened, 2), vec![(3, b"three".to_vec())]);
    let seen = rt.block_on(async {
        let js = async_nats::jetstream::new(client.clone());
        let mut f = Follower::start(&js, "zko", 1).await.unwrap();
        let mut seen = f.next_batch().await.unwrap().unwrap();
        seen.extend(f.next_batch().await.unwrap().unwrap());
        seen
    });
    assert_eq!(seen.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2, 3]);
    // A takeover after a takeover (a third engine): the second one is fenced too.
    let mut third = open();
    assert_eq!(third.append_takeover("c 9").unwrap(), 4);
    assert!(matches!(
        new.append_batch(&[b"x"]),
        Err(StoreError::Fenced { .. })
    ));
    // A takeover from a stale end is fenced; after reopen it goes through.
    let mut late =
        JetStreamJournal::open(rt.handle().clone(), client.clone(), JournalOptions::new("zko")).unwrap();
    third.append_batch(&[b"four"]).unwrap();
    assert!(late.append_takeover("d 10").unwrap_err().is_fenced());
    late.reopen().unwrap();
    assert_eq!(late.append_takeover("d 10").unwrap(), 6);
    assert_eq!(late.last_seq(), 4);
}

#[test]
fn a_retried_append_with_the_same_msg_id_is_not_stored_twice() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let rt = runtime();
    let client = rt.block_on(opcenter_cluster::connect(&nats.urls())).unwrap();
    let opts = JournalOptions {
        writer_id: Some("engine-a".into()),
        ..JournalOptions::new("zko")
    };
    let mut original = JetStreamJournal::open(rt.handle().clone(), client.clone(), opts.clone()).unwrap();
    // `retry` knows the same tail as `original` did before its append: its append is
    // exactly the resend of an append whose ack was lost.
    let mut retry = JetStreamJournal::open(rt.handle().clone(), client, opts).unwrap();
    assert_eq!(original.append_batch(&[b"p", b"q"]).unwrap(), 1..=2);
    assert_eq!(retry.append_batch(&[b"p", b"q"]).unwrap(), 1..=2);
    assert_eq!(stream_messages(&original), 1);
    assert_eq!(payloads(&retry, 0), vec![(1, b"p".to_vec()), (2, b"q".to_vec())]);
    // And the retrying writer carries on from there.
    assert_eq!(retry.append_batch(&[b"r"]).unwrap(), 3..=3);
    assert_eq!(stream_messages(&original), 2);
}

#[test]
fn pipelined_appends_keep_order_and_large_batches_are_split() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let mut j = JetStreamJournal::connect(&nats.urls(), JournalOptions::new("zko")).unwrap();
    let mut expect = Vec::new();
    for i in 0..2000u64 {
        let p = i.to_le_bytes();
        let r = j.submit(&[&p]).unwrap();
        assert_eq!(r, i + 1..=i + 1);
        expect.push((i + 1, p.to_vec()));
    }
    assert_eq!(j.wait_acked().unwrap(), 2000);
    assert_eq!(j.in_flight(), 0);
    // 3 MiB in one batch: more than one message can carry (1 MiB max payload).
    let big: Vec<Vec<u8>> = (0..48u8).map(|b| vec![b; 64 * 1024]).collect();
    let refs: Vec<&[u8]> = big.iter().map(Vec::as_slice).collect();
    assert_eq!(j.append_batch(&refs).unwrap(), 2001..=2048);
    expect.extend(big.iter().enumerate().map(|(i, b)| (2001 + i as u64, b.clone())));
    assert_eq!(payloads(&j, 0), expect);
    // Reads in chunks, as a replay loop does, see every record once.
    let mut after = 0;
    let mut n = 0;
    loop {
        let chunk = j.read_from(after, 333).unwrap();
        let Some(last) = chunk.last() else { break };
        assert_eq!(chunk[0].seq, after + 1);
        after = last.seq;
        n += chunk.len();
    }
    assert_eq!(n, 2048);
    // A record that cannot fit one message is refused before any I/O, not poisoning.
    let huge = vec![0u8; 2 << 20];
    assert!(matches!(
        j.append_batch(&[&huge]),
        Err(StoreError::RecordTooLarge { .. })
    ));
    assert_eq!(j.append_batch(&[b"after"]).unwrap(), 2049..=2049);
}

/// The `Journal` trait's pipelining, as the engine thread uses it: batches
/// submitted back to back, each waited for in turn (`wait_durable` up to its last
/// seq, later ones still in flight); after a second writer's append every batch
/// in flight is fenced, none of them counts as saved.
#[test]
fn submitted_batches_are_durable_in_order_and_a_fence_fails_all_in_flight() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let rt = runtime();
    let client = rt.block_on(opcenter_cluster::connect(&nats.urls())).unwrap();
    let open = || {
        let j =
            JetStreamJournal::open(rt.handle().clone(), client.clone(), JournalOptions::new("zko")).unwrap();
        Box::new(j) as Box<dyn Journal>
    };
    let mut j = open();
    assert!(j.pipelined());
    let ranges: Vec<_> = (0..8u8)
        .map(|i| j.submit_batch(&[&[i], &[i, i]]).unwrap())
        .collect();
    assert_eq!(ranges[0], 1..=2);
    assert_eq!(ranges[7], 15..=16);
    // Durable one batch at a time, in order; later ones may still be in flight.
    for r in &ranges {
        j.wait_durable(*r.end()).unwrap();
        assert!(j.last_seq() >= *r.end());
    }
    assert_eq!(j.last_seq(), 16);
    assert_eq!(payloads(&*j, 14), vec![(15, vec![7]), (16, vec![7, 7])]);

    // Another writer appends behind our back; three batches of ours go in flight
    // after it, each expecting the stream where this writer left it.
    let mut other = open();
    other.append_batch(&[b"theirs"]).unwrap();
    let a = j.submit_batch(&[b"a"]).unwrap();
    let b = j.submit_batch(&[b"b"]).unwrap();
    let c = j.submit_batch(&[b"c"]).unwrap();
    let err = j.wait_durable(*a.end()).unwrap_err();
    assert!(matches!(err, StoreError::Fenced { .. }), "{err}");
    assert!(matches!(j.wait_durable(*b.end()), Err(StoreError::Poisoned)));
    assert!(matches!(j.wait_durable(*c.end()), Err(StoreError::Poisoned)));
    assert_eq!(
        j.last_seq(),
        16,
        "nothing of ours after the fence counts as saved"
    );
    // The stream holds the other writer's record after ours, nothing of the fenced batches.
    let reader = open();
    assert_eq!(payloads(&*reader, 16), vec![(17, b"theirs".to_vec())]);
}

#[test]
fn large_snapshots_round_trip_the_newest_two_are_kept_and_compaction_follows() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let urls = nats.urls();
    let mut j = JetStreamJournal::connect(&urls, JournalOptions::new("zko")).unwrap();
    assert_eq!(j.latest_snapshot().unwrap(), None);
    for i in 0..100u64 {
        j.append_batch(&[&i.to_le_bytes()]).unwrap();
    }
    assert!(matches!(
        j.write_snapshot(101, b"x"),
        Err(StoreError::SnapshotAhead { .. })
    ));
    // 3.5 MiB, not a multiple of the chunk size, with varying bytes.
    let snap = |n: u64| -> Vec<u8> { (0..(3 << 20) + 12345).map(|i: u64| (i * 31 + n) as u8).collect() };
    j.write_snapshot(40, &snap(40)).unwrap();
    j.write_snapshot(60, &snap(60)).unwrap();
    j.write_snapshot(80, &snap(80)).unwrap();
    let (seq, bytes) = j.latest_snapshot().unwrap().unwrap();
    assert_eq!(seq, 80);
    assert!(bytes == snap(80));

    // Compaction keeps what the older kept snapshot (60) needs.
    let first = j.compact(10).unwrap();
    assert_eq!(first, 61);
    assert!(matches!(j.read_from(0, 10), Err(StoreError::Compacted { .. })));
    assert!(!j.reaches_back(59));
    assert_eq!(j.read_from(60, 1).unwrap()[0].seq, 61);
    drop(j);
    let j = JetStreamJournal::connect(&urls, JournalOptions::new("zko")).unwrap();
    assert_eq!((j.first_seq(), j.last_seq()), (61, 100));
    assert_eq!(j.latest_snapshot().unwrap().unwrap().0, 80);
}

/// A prepared snapshot is written without the journal: appends go on (here on
/// this thread, while another writes the snapshot), and the newest snapshot's
/// seq is listed without reading it.
#[test]
fn prepared_snapshot_is_written_while_the_journal_appends() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let urls = nats.urls();
    let mut j = JetStreamJournal::connect(&urls, JournalOptions::new("zko")).unwrap();
    for i in 0..50u64 {
        j.append_batch(&[&i.to_le_bytes()]).unwrap();
    }
    assert_eq!(j.latest_snapshot_seq().unwrap(), None);
    assert!(matches!(
        j.prepare_snapshot(51),
        Err(StoreError::SnapshotAhead { .. })
    ));
    let writer = j
        .prepare_snapshot(50)
        .unwrap()
        .expect("a JetStream journal prepares its writes");
    // 3.5 MiB: several chunks, so the write takes many puts.
    let snap: Vec<u8> = (0..(3u64 << 20) + 999).map(|i| (i * 7) as u8).collect();
    let bytes = snap.clone();
    let written = std::thread::spawn(move || writer.write(&bytes));
    let mut appended = 0u64;
    while !written.is_finished() || appended < 10 {
        j.append_batch(&[&(50 + appended).to_le_bytes()]).unwrap();
        appended += 1;
    }
    written.join().unwrap().unwrap();
    assert_eq!(j.last_seq(), 50 + appended);
    assert_eq!(j.latest_snapshot_seq().unwrap(), Some(50));
    let (seq, got) = j.latest_snapshot().unwrap().unwrap();
    assert_eq!(seq, 50);
    assert!(got == snap, "the snapshot reads back as written");
}

#[test]
fn r3_stream_survives_kill_9_of_its_leader_during_appends() {
    let Some(nats) = NatsCluster::start_or_skip(3) else {
        return;
    };
    let urls = nats.urls();
    let opts = JournalOptions::new("zko").replicas(3);
    let mut j = JetStreamJournal::connect(&urls, opts.clone()).unwrap();
    // A new R3 stream may still be electing its first leader.
    let leader = (0..100)
        .find_map(|_| {
            stream_leader(&j).or_else(|| {
                std::thread::sleep(Duration::from_millis(100));
                None
            })
        })
        .expect("the stream has a leader");
    let victim = nats.index_of(&leader).unwrap();
    let nats = Arc::new(Mutex::new(nats));
    let killer = {
        let nats = nats.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            nats.lock().unwrap().kill(victim).unwrap();
        })
    };
    // Appends before, during and after the election; every Ok is an acknowledgement.
    let mut acked = Vec::new();
    let start = std::time::Instant::now();
    let mut i = 0u64;
    let mut longest = Duration::ZERO;
    while !killer.is_finished() || start.elapsed() < Duration::from_secs(2) || acked.len() < 3000 {
        let p = i.to_le_bytes();
        let t = std::time::Instant::now();
        let r = j
            .append_batch(&[&p, b"x"])
            .expect("append retried through the election");
        longest = longest.max(t.elapsed());
        assert_eq!(*r.start(), 2 * i + 1);
        acked.push(i);
        i += 1;
        if start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    killer.join().unwrap();
    // The kill hit the stream's leader: another server leads it now.
    let new_leader = stream_leader(&j);
    assert!(new_leader.is_some_and(|l| l != leader), "leader still {leader}");
    drop(j);
    // A fresh reader through the surviving servers sees every acknowledged record once.
    let j = JetStreamJournal::connect(&urls, opts).unwrap();
    assert_eq!(j.last_seq(), 2 * acked.len() as u64);
    let recs = j.read_from(0, usize::MAX).unwrap();
    assert_eq!(recs.len(), 2 * acked.len());
    for (k, r) in recs.chunks(2).enumerate() {
        assert_eq!(r[0].payload, (k as u64).to_le_bytes());
        assert_eq!(r[0].seq, 2 * k as u64 + 1);
    }
    eprintln!(
        "{} batches acknowledged across the kill of leader {leader}; longest append {longest:?}",
        acked.len()
    );
}

#[test]
fn a_follower_reads_from_any_seq_and_waits_for_new_batches() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let mut j = JetStreamJournal::connect(&nats.urls(), JournalOptions::new("zko")).unwrap();
    j.append_batch(&[b"a", b"b", b"c"]).unwrap();
    j.append_batch(&[b"d", b"e"]).unwrap();
    let rt = runtime();
    let client = rt.block_on(opcenter_cluster::connect(&nats.urls())).unwrap();
    let js = rt.block_on(async { async_nats::jetstream::new(client) });
    let seqs = |b: Vec<opcenter_store::Record>| -> Vec<(u64, Vec<u8>)> {
        b.into_iter().map(|r| (r.seq, r.payload)).collect()
    };
    let (mut from_1, mut tail) = rt.block_on(async {
        // Starting inside a batch: the records already seen are skipped.
        let mut f = Follower::start(&js, "zko", 1).await.unwrap();
        assert_eq!(f.epoch(), j.epoch());
        let b = f.next_batch().await.unwrap().unwrap();
        assert_eq!(seqs(b), vec![(2, b"b".to_vec()), (3, b"c".to_vec())]);
        let b = f.next_batch().await.unwrap().unwrap();
        assert_eq!(seqs(b), vec![(4, b"d".to_vec()), (5, b"e".to_vec())]);
        // Caught up: it waits for the next append.
        let mut tail = Follower::start(&js, "zko", 5).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), tail.next_batch()).await;
        assert!(waited.is_err(), "nothing to read yet");
        (f, tail)
    });
    j.append_batch(&[b"f"]).unwrap();
    rt.block_on(async {
        for f in [&mut from_1, &mut tail] {
            let b = f.next_batch().await.unwrap().unwrap();
            assert_eq!(seqs(b), vec![(6, b"f".to_vec())]);
            assert_eq!(f.next_seq(), 7);
        }
    });
}

#[test]
fn a_snapshot_past_the_end_of_a_recreated_stream_is_ignored() {
    let Some(nats) = NatsCluster::start_or_skip(1) else {
        return;
    };
    let urls = nats.urls();
    let mut old = JetStreamJournal::connect(&urls, JournalOptions::new("zko")).unwrap();
    old.append_batch(&[b"a", b"b", b"c"]).unwrap();
    old.write_snapshot(3, b"state at 3").unwrap();
    let old_epoch = old.epoch().to_owned();

    // The stream is deleted and created again; the snapshot bucket stays.
    let rt = runtime();
    let js = old.jetstream().clone();
    rt.block_on(async { js.delete_stream(&old.names().stream).await.unwrap() });
    let mut new = JetStreamJournal::connect(&urls, JournalOptions::new("zko")).unwrap();
    assert_ne!(new.epoch(), old_epoch);
    assert_eq!(new.last_seq(), 0);
    assert_eq!(
        new.latest_snapshot().unwrap(),
        None,
        "a snapshot at seq 3 of an empty stream would skip its first records"
    );
    new.append_batch(&[b"x", b"y", b"z", b"w"]).unwrap();
    new.write_snapshot(4, b"state at 4").unwrap();
    let new = JetStreamJournal::connect(&urls, JournalOptions::new("zko")).unwrap();
    assert_eq!(new.latest_snapshot().unwrap(), Some((4, b"state at 4".to_vec())));
}
